#!/usr/bin/env bash
# The GPU check: one prepared run on a fresh machine with one H100 or H200, python3 with
# torch, triton, pytest and nvidia-ml-py, and no network. From the repository root:
#
#     OUT=/some/dir scripts/gpu_check.sh             the check (OUT defaults to ./gpu_out)
#     OUT=/some/dir scripts/gpu_check.sh --rehearse  every step on the CPU, at tiny sizes
#     scripts/gpu_check.sh --budget                  each step's timeout, and their total
#
# GPU_CHECK_REHEARSE=1 rehearses too. The steps, most telling first: install, environment,
# the CUDA tests (tests/test_cuda.py), a short training run, a one-GPU torchrun run on the
# default path (compile + DDP + CUDA graphs), a profile at batch 4096, then the benchmarks
# (bench ops, bench step). A failing step does not stop the ones after it; the script exits
# 1 if any failed. Each step runs under `timeout`, and all of them together, kill grace
# included, stay within BUDGET_LIMIT_S (480 s): call it with the device's timeout_s 540,
# which leaves time to pack and bring back the results, and none for a rerun.
#
# Everything is written to a work folder; on exit (a step's timeout does not stop it) it is
# packed into $OUT/gpu_check.tgz, minus checkpoints. Beside it, as plain files: status.txt
# (step, exit status, seconds, timeout; written as each step ends) and summary.txt (the
# status and each step's last line). Three files: the device brings back at most 8.
set -u -o pipefail

BUDGET_LIMIT_S=480
KILL_S=3  # timeout's grace between TERM and KILL
STEPS=(install environment cuda_tests train torchrun profile bench_ops bench_step)
declare -A TIMEOUT_S=(
    [install]=25 [environment]=15 [cuda_tests]=120 [train]=55 [torchrun]=90 [profile]=40
    [bench_ops]=40 [bench_step]=60
)

budget() {
    local name total=0
    for name in "${STEPS[@]}"; do
        echo "$name ${TIMEOUT_S[$name]} $KILL_S"
        total=$((total + TIMEOUT_S[$name] + KILL_S))
    done
    echo "total $total $BUDGET_LIMIT_S"
}

REHEARSE=${GPU_CHECK_REHEARSE:-0}
case "${1:-}" in
    "") ;;
    --rehearse) REHEARSE=1 ;;
    --budget) budget; exit 0 ;;
    *) echo "usage: scripts/gpu_check.sh [--rehearse | --budget]" >&2; exit 2 ;;
esac

# ---- What each step runs, at the GPU's sizes or the rehearsal's. The step functions take
# everything from these variables, so the rehearsal runs the same code.
export PYTHON=${PYTHON:-python3} PYTHONUNBUFFERED=1
if [ "$REHEARSE" = 1 ]; then
    export DEVICE=cpu
    # pip's plumbing, leaving the environment's packages (and a venv without setuptools,
    # which --no-build-isolation needs) alone
    PIP_ARGS=(show fastgan)
    # The torch engine: the native one would build the C++ kernels first.
    TRAIN_ARGS=(--dataset ring --steps 20 --log-every 10 --eval-every 20 --engine torch)
    TORCHRUN_ARGS=(--dataset ring --steps 20 --log-every 10 --eval-every 20)
    PROFILE_ARGS=(--dataset ring --batch-size 32 --steps 3 --warmup 2 --engine torch)
    OPS_ARGS=(--ops mse_loss --batches 16 --quick --repeat-ms 2)
    STEP_ARGS=(--modes ae --batches 16 --repeat-ms 2 --variants eager,fastgan_torch_engine)
else
    export DEVICE=cuda
    PIP_ARGS=(install --no-deps --no-build-isolation -e .)
    TRAIN_ARGS=(--steps 2000 --ae-steps 500 --log-every 250 --eval-every 2000)
    TORCHRUN_ARGS=(--dataset ring --steps 600 --log-every 100 --eval-every 600)
    PROFILE_ARGS=(--batch-size 4096)
    # Default compile mode: max-autotune would autotune every GEMM from a cold cache.
    OPS_ARGS=(--batches 64,4096 --quick)
    # c/a at batch 64 and c/b at 4096; rows go out per variant, so a timeout keeps them.
    STEP_ARGS=(--modes latent-cgan --batches 64,4096)
fi

OUT=${OUT:-./gpu_out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
printf '# step status seconds timeout_s\n' >"$OUT/status.txt"
failed=0
started=$SECONDS

# ---- The plumbing

# limited CMD...: CMD under the current step's timeout. One per step, so that the budget
# above is what the steps can take.
limited() {
    if [ -n "${timed:-}" ]; then
        echo "gpu_check: step $current runs a second timed command" >&2
        return 99
    fi
    timed=1
    timeout -k "$KILL_S" "${TIMEOUT_S[$current]}" "$@"
}

# step NAME: runs step_NAME with its output in $WORK/NAME.txt, and appends
# "NAME STATUS SECONDS TIMEOUT" to status.txt.
step() {
    current=$1 timed=
    local start=$SECONDS status log="$WORK/$1.txt"
    echo "=== $current (timeout ${TIMEOUT_S[$current]} s)"
    "step_$current" >"$log" 2>&1
    status=$?
    tail -n 3 "$log"
    echo "$current $status $((SECONDS - start)) ${TIMEOUT_S[$current]}" >>"$OUT/status.txt"
    if [ "$status" -ne 0 ]; then failed=1; fi
}

# The last line of a log, without progress bars' carriage returns.
last_line() {
    tr '\r' '\n' <"$1" 2>/dev/null | grep -v '^[[:space:]]*$' | tail -n 1 | cut -c 1-200
}

summarize() {
    local line name status seconds timeout ok=0 all=0
    {
        while read -r name status seconds timeout; do
            [ "$name" = "#" ] && continue
            all=$((all + 1))
            [ "$status" = 0 ] && ok=$((ok + 1))
            printf '%-12s %-10s %4s s of %3s s  %s\n' "$name" \
                "$([ "$status" = 0 ] && echo ok || echo "failed $status")" "$seconds" \
                "$timeout" "$(last_line "$WORK/$name.txt")"
        done <"$OUT/status.txt"
    } >"$WORK/summary.body"
    {
        echo "gpu_check on $DEVICE$([ "$REHEARSE" = 1 ] && echo ' (CPU rehearsal)'):" \
            "$ok of $all steps ok (${#STEPS[@]} planned), $((SECONDS - started)) s," \
            "budget $(budget | awk '$1 == "total" {print $2}') s"
        cat "$WORK/summary.body"
    } >"$OUT/summary.txt"
    rm -f "$WORK/summary.body"
}

# Packs the work folder into $OUT/gpu_check.tgz: the checkpoints stay behind, and so do
# the traces if the archive would pass the device's 16 MiB per file.
pack() {
    cp "$OUT/status.txt" "$OUT/summary.txt" "$WORK/"
    tar -czf "$OUT/gpu_check.tgz" -C "$WORK" --exclude='*.pt' .
    if [ "$(stat -c %s "$OUT/gpu_check.tgz")" -gt $((15 * 1024 * 1024)) ]; then
        tar -czf "$OUT/gpu_check.tgz" -C "$WORK" --exclude='*.pt' --exclude='trace.json*' .
        echo "gpu_check: traces left out of the archive (over 15 MiB with them)" >>"$OUT/summary.txt"
    fi
}

finish() {
    local status=$?
    trap - EXIT
    summarize
    pack
    rm -rf "$WORK"
    echo "=== summary"
    cat "$OUT/summary.txt"
    exit "$status"
}
trap finish EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

# ---- The steps

step_install() {
    limited "$PYTHON" -m pip "${PIP_ARGS[@]}"
}

step_environment() {
    # shellcheck disable=SC2016  # expanded by the inner shell
    limited bash -c '
        status=0
        if [ "$DEVICE" = cuda ]; then nvidia-smi || status=1; fi
        "$PYTHON" --version
        "$PYTHON" - <<"EOF" || status=1
import importlib, os, torch
print("torch", torch.__version__, "CUDA", torch.version.cuda, "cpus", os.cpu_count())
if os.environ["DEVICE"] == "cuda":
    print("GPU", torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability())
    print("NCCL", torch.cuda.nccl.version())
for name in ("triton", "pytest", "hypothesis", "ninja", "pynvml", "matplotlib", "numpy"):
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "present"))
    except ImportError:
        print(name, "not installed")
EOF
        exit "$status"'
}

step_cuda_tests() {
    # The checks only a GPU can make: no host sync, CUDA-graph capture, graphed runs bit
    # for bit as eager ones, resume, compile. -v: each result is in the log as it comes.
    limited "$PYTHON" -m pytest -v -p no:cacheprovider --durations=0 tests/test_cuda.py
}

step_train() {
    # The default latent-cgan on the packaged MNIST, shortened.
    limited "$PYTHON" -m fastgan train --device "$DEVICE" "${TRAIN_ARGS[@]}" \
        --out "$WORK/train-run"
}

step_torchrun() {
    # One GPU under torchrun, on the default path: NCCL, DDP built on the run's side
    # stream, compiled losses, 11 warm-up iterations, then each iteration one CUDA graph.
    limited "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node 1 \
        -m fastgan train --device "$DEVICE" "${TORCHRUN_ARGS[@]}" --out "$WORK/torchrun-run"
}

step_profile() {
    # The default model's GAN phase: trace (gzipped), NVML samples and plot, report; its
    # first run measures and caches the GPU's peaks.
    limited "$PYTHON" -m fastgan profile --device "$DEVICE" "${PROFILE_ARGS[@]}" \
        --out "$WORK/profile-run" --overwrite
    local status=$?
    gzip -f "$WORK/profile-run/trace.json" 2>/dev/null
    return "$status"
}

step_bench_ops() {
    limited "$PYTHON" -m fastgan bench ops --device "$DEVICE" "${OPS_ARGS[@]}" \
        --compile-mode default --out "$WORK/bench"
}

step_bench_step() {
    limited "$PYTHON" -m fastgan bench step --device "$DEVICE" "${STEP_ARGS[@]}" \
        --compile-mode default --out "$WORK/bench"
}

for name in "${STEPS[@]}"; do
    step "$name"
done
exit "$failed"
