"""The command line, run as a user runs it: `python -m fastgan ...` in a subprocess."""

import dataclasses
import json

import pytest
import torch
from helpers import fastgan

from fastgan.perf import bench_ops


def test_bench_ops_quick_prints_the_table_and_writes_the_report(tmp_path, monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # a setting that changes what is timed
    result = fastgan("bench", "ops", "--quick", "--device", "cpu", "--out", str(tmp_path))

    assert result.returncode == 0, result.stderr
    assert "fastgan/eager" in result.stdout and "fastgan/compile" in result.stdout
    [path] = tmp_path.glob("ops-cpu-*.json")
    report = json.loads(path.read_text())
    assert report["device_type"] == "cpu" and report["dtype"] == "float32"
    assert report["command"].startswith("fastgan bench ops --quick")
    assert report["environment"]["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    ops = {row["op"] for row in report["rows"]}
    assert ops == {"fused_dense/leaky_relu", "fused_dense/none", "fused_dense/sigmoid",
                   "gan_d_loss", "gan_g_loss", "bce_with_logits", "mse_loss"}
    assert {row["batch"] for row in report["rows"]} == {64, 256}
    for row in report["rows"]:
        assert row["eager_ms"] > 0 and row["fastgan_ms"] > 0, row
        # torch.compile needs a working C++ compiler; without one the error is recorded.
        assert row["compile_ms"] is not None or "compile" in row["errors"], row
        assert row["op"] in result.stdout


def test_bench_records_a_wrong_result_instead_of_timing_it():
    cpu = torch.device("cpu")
    case = bench_ops._loss_case("mse_loss", 64, cpu, torch.float32)
    broken = dataclasses.replace(case, fastgan=lambda *args: 2 * case.fastgan(*args))

    row = bench_ops._measure(broken, cpu, torch.float32, repeat_ms=1.0,
                             compile_options={"mode": "default", "dynamic": False})

    assert row["fastgan_ms"] is None and row["fastgan_vs_eager"] is None
    assert row["errors"]["fastgan"].startswith("AssertionError: output: ")
    assert row["eager_ms"] > 0


@pytest.mark.parametrize("args, message", [
    (["bench", "ops", "--batches", "abc"],
     "fastgan: error: --batches: expected comma-separated positive integers, got 'abc'"),
    (["bench", "ops", "--batches", "64,0"], "fastgan: error: --batches: "),
    (["bench", "ops", "--dtype", "float64"], "fastgan: error: --dtype: invalid choice"),
    (["bench", "ops", "--repeat-ms", "0"], "fastgan: error: --repeat-ms: "),
    (["bench", "ops", "--ops", "mse_loss,dense"],
     "fastgan: error: --ops: expected comma-separated ops of fused_dense, gan_d_loss"),
    (["bench"], "fastgan: error: "),
    (["frobnicate"], "fastgan: error: command: invalid choice: 'frobnicate'"),
    pytest.param(["bench", "ops", "--device", "cuda"], "fastgan: error: --device cuda: ",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="has a GPU")),
])
def test_bad_input_is_one_line_and_status_2(args, message):
    result = fastgan(*args)

    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(message)
    assert "Traceback" not in result.stderr and result.stdout == ""


@pytest.mark.parametrize("variable, value", [("FASTGAN_BACKEND", "cuda"),
                                             ("FASTGAN_NATIVE_GEMM", "mkl")])
def test_a_bad_kernel_variable_is_one_line_and_status_2(variable, value, monkeypatch, tmp_path):
    monkeypatch.setenv(variable, value)
    result = fastgan("train", "--steps", "2", "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert result.stderr.startswith(f"fastgan: error: {variable}: expected one of")
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert not (tmp_path / "run").exists()
