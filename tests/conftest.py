"""Shared fixtures. Without a GPU, the Triton kernels run on CPU tensors through Triton's
interpreter, which must be switched on before fastgan's kernels are imported."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import shutil  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from fastgan import files  # noqa: E402

# The suite never writes the user's cache (peaks measured on a busy test machine would be
# read back by every later profile): the session gets a throwaway FASTGAN_CACHE_DIR. The C++
# build stays where the user's is: a build is keyed by its sources and flags, so sharing it
# is safe, and rebuilding it would cost every session a minute or two.
USER_CACHE_DIR = files.cache_dir()
os.environ.setdefault("FASTGAN_BUILD_DIR", str(files.build_dir()))
SESSION_CACHE_DIR = Path(tempfile.mkdtemp(prefix="fastgan-test-cache-"))
os.environ["FASTGAN_CACHE_DIR"] = str(SESSION_CACHE_DIR)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(SESSION_CACHE_DIR, ignore_errors=True)


@pytest.fixture
def user_cache_dir() -> Path:
    """The FASTGAN_CACHE_DIR the suite was started with (default ~/.cache/fastgan)."""
    return USER_CACHE_DIR


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


@pytest.fixture(autouse=True)
def _fixed_threads(monkeypatch):
    # `fastgan train` fits its thread count to the machine's load at start-up; in this process
    # that would change the threads of every test after it, and with them the sums' order.
    # tests/test_devices.py checks the fitting itself.
    monkeypatch.setattr("fastgan.cli.fit_threads_to_load", lambda device: None)
