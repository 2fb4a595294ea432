#!/usr/bin/env bash
# The GPU check: one prepared run on a fresh machine with one H100 or H200, python3 with
# torch, triton and nvidia-ml-py, and no network. From the repository root:
#
#     OUT=/some/dir scripts/gpu_check.sh        (OUT defaults to ./gpu_out)
#
# Writes to $OUT: env.txt, install.txt, pytest.txt, bench_ops.txt, the bench's
# ops-<gpu>-<date>.json, and status.txt with each step's exit status and seconds. A failing
# step does not stop the ones after it; the script exits 1 if any failed. The timeouts keep
# the whole run under 6 minutes.
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

tests() {
    if ! python3 -c 'import pytest' 2>/dev/null; then
        echo "pytest is not installed on this machine: the test suite did not run" |
            tee "$OUT/pytest.txt"
        return 127
    fi
    timeout -k 10 160 python3 -m pytest -x -q -p no:cacheprovider tests 2>&1 |
        tee "$OUT/pytest.txt"
}

bench_ops() {
    # The bench rewrites its JSON after every case, so a timeout still leaves the rows so far.
    timeout -k 10 150 python3 -m fastgan bench ops --device cuda --out "$OUT" 2>&1 |
        tee "$OUT/bench_ops.txt"
}

step install install
step environment environment
step tests tests
step bench_ops bench_ops

echo "=== status (step, exit status, seconds)"
cat "$OUT/status.txt"
exit "$failed"
