#!/usr/bin/env bash
# The GPU check: one prepared run on a fresh machine with one H100 or H200, python3 with
# torch, triton and nvidia-ml-py, and no network. From the repository root:
#
#     OUT=/some/dir scripts/gpu_check.sh        (OUT defaults to ./gpu_out)
#
# Writes to $OUT: env.txt, install.txt, pytest_cuda.txt, bench_step.txt and
# step-<gpu>-<date>.json (the training iteration against eager and torch.compile),
# bench_ops.txt and ops-<gpu>-<date>.json, profile.txt and profile-b64/, profile-b4096/ (`fastgan profile` of
# the default model: trace, NVML samples and plot, report), train.txt and train-cuda/ (a
# short default training run's config, metrics, summary and last sample grid), torchrun.txt
# and torchrun-cuda/ (the same files of a one-GPU torchrun run: NCCL, DDP, CUDA graphs),
# pytest.txt, and status.txt with each step's exit status and seconds. The most telling
# steps run first; a failing step does not stop the ones after it, and the script exits 1 if
# any failed. The timeouts add up to 10 minutes (60 + 100 + 170 + 90 + 30 + 2 x 45 + 45 +
# 15 s): the device's limit per call. The last steps are the least telling; call it with
# timeout_s 600, and a session that must rerun it needs a fresh budget.
set -u -o pipefail

OUT=${OUT:-./gpu_out}
mkdir -p "$OUT"
: >"$OUT/status.txt"
failed=0

# step NAME FUNCTION: runs it, appends "NAME STATUS SECONDS" to status.txt.
step() {
    local name=$1 start=$SECONDS status
    echo "=== $name"
    "$2"
    status=$?
    echo "$name $status $((SECONDS - start))s" >>"$OUT/status.txt"
    if [ "$status" -ne 0 ]; then failed=1; fi
}

install() {
    timeout -k 5 60 python3 -m pip install --no-deps --no-build-isolation -e . \
        >"$OUT/install.txt" 2>&1
}

environment() {
    local status=0
    {
        nvidia-smi || status=1
        python3 --version
        python3 -c 'import torch, triton
print("torch", torch.__version__, "CUDA", torch.version.cuda)
print("triton", triton.__version__)
print("GPU", torch.cuda.get_device_name())' || status=1
        python3 -c 'import pytest; print("pytest", pytest.__version__)' ||
            echo "pytest: not installed"
    } >"$OUT/env.txt" 2>&1
    return "$status"
}

cuda_tests() {
    # The checks that only a GPU can make: no host sync, CUDA-graph capture, compile.
    timeout -k 10 100 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 |
        tee "$OUT/pytest_cuda.txt"
}

bench_step() {
    # The engine's targets: c/a at batch 64 and c/b at every batch, against max-autotune
    # (autotuning costs time, so batches 64 and 4096 here; the JSON is rewritten after every
    # row, so a timeout still leaves the rows measured so far).
    timeout -k 10 170 python3 -m fastgan bench step --device cuda --batches 64,4096 \
        --out "$OUT" 2>&1 | tee "$OUT/bench_step.txt"
}

bench_ops() {
    # Default compile mode: max-autotune would autotune every GEMM of every case, far past
    # this script's budget. The JSON records the mode.
    timeout -k 10 45 python3 -m fastgan bench ops --device cuda --batches 64,4096 --quick \
        --compile-mode default --out "$OUT" 2>&1 | tee "$OUT/bench_ops.txt"
}

profile_cuda() {
    # The default model's GAN phase at a small and a large batch: the first measures and
    # caches the GPU's peaks. trace.json comes back gzipped (on the CPU path the default
    # 30 steps make 12 MB of JSON, 0.8 MB gzipped).
    local status=0 batch
    for batch in 64 4096; do
        timeout -k 10 45 python3 -m fastgan profile --device cuda --batch-size "$batch" \
            --out "$OUT/profile-b$batch" --overwrite 2>&1 | tee -a "$OUT/profile.txt"
        [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
        gzip -f "$OUT/profile-b$batch/trace.json" 2>/dev/null
    done
    return "$status"
}

train_cuda() {
    # The default latent-cgan on the packaged MNIST, shortened; the checkpoints stay behind
    # (tens of MB), the small files come back.
    local run=/tmp/fastgan-train-cuda
    rm -rf "$run"
    timeout -k 10 90 python3 -m fastgan train --device cuda --steps 4000 --ae-steps 1000 \
        --out "$run" 2>&1 | tr '\r' '\n' | tail -n 40 | tee "$OUT/train.txt"
    local status=${PIPESTATUS[0]}
    mkdir -p "$OUT/train-cuda"
    cp "$run"/config.json "$run"/metrics.jsonl "$run"/summary.json "$OUT/train-cuda/" 2>/dev/null
    cp "$(ls "$run"/samples/*.png 2>/dev/null | tail -n 1)" "$OUT/train-cuda/" 2>/dev/null
    return "$status"
}

torchrun_cuda() {
    # One GPU under torchrun: NCCL, DDP built on a side stream, 11 warm-up iterations, then
    # each iteration (DDP's all-reduces included) one CUDA graph. Not compiled: compiling
    # takes longer than this step's 30 s.
    local run=/tmp/fastgan-torchrun-cuda
    rm -rf "$run"
    timeout -k 10 30 python3 -m torch.distributed.run --standalone --nproc-per-node 1 \
        -m fastgan train --device cuda --dataset ring --steps 600 --log-every 100 \
        --eval-every 600 --no-compile --out "$run" 2>&1 | tr '\r' '\n' | tail -n 40 |
        tee "$OUT/torchrun.txt"
    local status=${PIPESTATUS[0]}
    mkdir -p "$OUT/torchrun-cuda"
    cp "$run"/config.json "$run"/metrics.jsonl "$run"/summary.json "$OUT/torchrun-cuda/" \
        2>/dev/null
    return "$status"
}

all_tests() {
    # The whole suite, with the Triton kernels compiled for real on CUDA tensors. The C++
    # kernels need ninja, which a machine without network may lack: then skip their tests.
    local select=()
    if ! python3 -c 'import ninja' 2>/dev/null; then
        select=(-k "not cpp")
        echo "ninja is not installed: the C++ backend's tests are left out" >"$OUT/pytest.txt"
    fi
    timeout -k 10 15 python3 -m pytest -q -x -p no:cacheprovider "${select[@]}" tests 2>&1 |
        tee -a "$OUT/pytest.txt"
}

step install install
step environment environment
if python3 -c 'import pytest' 2>/dev/null; then
    step cuda_tests cuda_tests
else
    echo "pytest is not installed on this machine: the test suite did not run" |
        tee "$OUT/pytest.txt"
    echo "tests 127 0s" >>"$OUT/status.txt"
    failed=1
fi
step bench_step bench_step
step train_cuda train_cuda
step torchrun_cuda torchrun_cuda
step profile_cuda profile_cuda
step bench_ops bench_ops
if python3 -c 'import pytest' 2>/dev/null; then
    step all_tests all_tests
fi

echo "=== status (step, exit status, seconds)"
cat "$OUT/status.txt"
exit "$failed"
