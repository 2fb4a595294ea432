"""FASTGAN_BACKEND selection and the fallback when no C++ compiler is available."""

import os
import subprocess
import sys

import pytest
import torch

from fastgan import ops

SNIPPET = """
import torch, fastgan.ops as ops
x, w = torch.randn(3, 4), torch.randn(2, 4)
assert torch.allclose(ops.fused_dense(x, w, None, "tanh"), torch.tanh(x @ w.T), atol=1e-6)
print("ok")
"""


def _run(env_changes, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("FASTGAN_BACKEND", "TRITON_INTERPRET")}
    env.update(FASTGAN_CACHE_DIR=str(tmp_path / "cache"), **env_changes)
    return subprocess.run([sys.executable, "-c", SNIPPET], env=env, capture_output=True,
                          text=True, timeout=300)


def test_no_compiler_falls_back_to_pytorch_with_one_line_warning(tmp_path):
    result = _run({"CXX": "/nonexistent/c++"}, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "C++ CPU kernels unavailable" in lines[0], result.stderr
    assert "no C++ compiler" in lines[0]


def test_forcing_cpp_without_a_compiler_is_an_error(tmp_path):
    result = _run({"CXX": "/nonexistent/c++", "FASTGAN_BACKEND": "cpp"}, tmp_path)
    assert result.returncode != 0
    assert "C++ CPU kernels unavailable: no C++ compiler" in result.stderr


def test_forcing_triton_on_cpu_needs_the_interpreter(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("on a GPU machine CUDA tensors take the Triton path")
    result = _run({"FASTGAN_BACKEND": "triton"}, tmp_path)
    assert result.returncode != 0
    assert "FASTGAN_BACKEND=triton on CPU tensors needs triton and TRITON_INTERPRET=1" in \
        result.stderr


def test_unknown_backend_is_refused(monkeypatch):
    monkeypatch.setenv("FASTGAN_BACKEND", "fortran")
    with pytest.raises(ValueError, match="FASTGAN_BACKEND: expected one of auto, triton"):
        ops.gan_g_loss(torch.randn(4))


def test_auto_picks_cpp_on_cpu_when_built(monkeypatch):
    from fastgan.backends import cpp, select

    monkeypatch.setenv("FASTGAN_BACKEND", "auto")
    assert cpp.available()
    assert select.backend_for(torch.device("cpu")) == "cpp"
