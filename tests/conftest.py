"""Shared fixtures. Without a GPU, the Triton kernels run on CPU tensors through Triton's
interpreter, which must be switched on before fastgan's kernels are imported."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

BACKENDS = ("torch", "cpp", "triton")


class Backend:
    def __init__(self, name: str):
        self.name = name
        # The C++ kernels take CPU tensors; the others run where the GPU is, if any.
        on_gpu = torch.cuda.is_available() and name != "cpp"
        self.device = torch.device("cuda" if on_gpu else "cpu")

    def __repr__(self) -> str:
        return f"{self.name}@{self.device.type}"


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch) -> Backend:
    monkeypatch.setenv("FASTGAN_BACKEND", request.param)
    return Backend(request.param)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
