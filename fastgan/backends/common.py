"""What every backend shares: whether Triton is there and interpreting, and the dtypes that
losses and accumulations use."""

import os

import torch

# triton.jit decides at decoration time whether a kernel runs in the interpreter, so what
# counts is the environment when fastgan's kernels were imported (which is now, or later).
TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

try:
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:  # macOS, Windows, aarch64 without a triton wheel
    HAS_TRITON = False


def result_dtype(*tensors) -> torch.dtype:
    """The dtype of a loss over these tensors (None skipped), promoted as torch does."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        if t is not None:
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 accumulation for 16- and 32-bit inputs, fp64 for fp64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32
