"""The Triton kernels compiled for sm_80 and sm_90 without a GPU
(fastgan/perf/compile_check.py), each in a subprocess: the suite's kernels run
in Triton's interpreter, which compiles nothing."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastgan.backends.common import HAS_TRITON
from fastgan.perf.compile_check import failures, specialization

ROOT = Path(__file__).resolve().parents[1]
KERNELS = {"dense_fwd_kernel", "dense_dx_kernel", "dense_dw_kernel", "gan_loss_kernel",
           "pointwise_loss_kernel"}


def _python(*args: str, timeout: float) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def _skip_unless_available():
    if not HAS_TRITON:
        pytest.skip("no triton")
    from fastgan.perf import compile_check

    reason = compile_check.unavailable()
    if reason:
        pytest.skip(reason)


ONE_KERNEL = """
import torch
from fastgan.backends.triton import gan_loss_fwd
from fastgan.perf import compile_check
with compile_check.recording(90) as (found, errors, context):
    context.update(dtype="bfloat16", activation=None, launch="test")
    gan_loss_fwd(torch.empty(64, dtype=torch.bfloat16), 1.0, None, 0.0, True, False)
[(name, _, constexprs, compiled, usage)] = found.values()
print(name, constexprs["NEED_GA"], usage["registers"] > 0, errors)
"""


def test_one_kernel_compiles_for_sm90_without_a_gpu():
    _skip_unless_available()
    result = _python("-c", ONE_KERNEL, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["gan_loss_kernel", "True", "True", "[]"]


def test_spills_fail_the_check_except_in_fp64():

    row = {"kernel": "dense_dx_kernel", "activation": "tanh", "spill_stores": 8,
           "spill_loads": 8}
    assert failures([], [{**row, "dtype": "float64"}]) == []
    assert failures([], [{**row, "dtype": "bfloat16"}]) == [
        "spills: dense_dx_kernel bfloat16 tanh 8/8 bytes stored/loaded"]
    error = {"kernel": "dense_fwd_kernel", "dtype": "float16", "launch": "x (64, 784)",
             "error": "PTXASError: ..."}
    assert failures([error], []) == [
        "compile error: dense_fwd_kernel (float16, x (64, 784)): PTXASError: ..."]


@pytest.mark.slow  # several hundred compiles per target: the two run side by side
def test_every_kernel_compiles_for_the_gpu_without_spills(tmp_path):
    _skip_unless_available()
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    jobs = {arch: subprocess.Popen(
        [sys.executable, "-m", "fastgan.perf.compile_check", "--arch", str(arch), "--out",
         str(tmp_path / f"kernels-sm{arch}.json")], env=env, cwd=ROOT, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE) for arch in (80, 90)}
    for arch, job in jobs.items():
        stdout, stderr = job.communicate(timeout=1800)
        assert job.returncode == 0, stdout + stderr[-3000:]
        _check_report(arch, json.loads((tmp_path / f"kernels-sm{arch}.json").read_text()))


def _check_report(arch: int, report: dict) -> None:
    assert report["compile_errors"] == [] and report["failures"] == []
    rows = report["kernels"]
    for dtype in ("float32", "bfloat16", "float16", "float64"):
        assert {row["kernel"] for row in rows if row["dtype"] == dtype} == KERNELS, dtype
    assert all(row["registers"] > 0 for row in rows)
    assert any(row["kernel"] == "dense_dw_kernel" and row["dtype"] == "bfloat16"
               and row["pointers"]["dw_ptr"] == "float32" for row in rows)  # the split path
    # The committed table lists the same specializations: it is up to date with the code.
    committed = json.loads((ROOT / "profiles" / f"kernels-sm{arch}.json").read_text())
    assert _specializations(committed) == _specializations(report), arch


def _specializations(report: dict) -> set:
    return {specialization(row) for row in report["kernels"]}
