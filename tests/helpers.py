"""Input makers for the op tests, and the command line as a user runs it."""

import os
import subprocess
import sys

import torch


def fastgan(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m fastgan ...` in a subprocess."""
    # conftest switches on Triton's interpreter for the in-process kernel tests; a user's
    # shell does not have it.
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, "-m", "fastgan", *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


def randn(shape, dtype, device, scale=1.0, layout="contiguous", requires_grad=False):
    """Random normal values (rounded to `dtype`) in the requested memory layout:
    "contiguous", "strided" (every other element of a wider tensor along the last dim) or
    "transposed" (the transpose of a contiguous tensor; for 2-D shapes)."""
    shape = tuple(shape)
    if layout == "strided" and shape:
        base = torch.randn(*shape[:-1], 2 * shape[-1], dtype=torch.float64) * scale
        t = base.to(device=device, dtype=dtype)[..., ::2]
    elif layout == "transposed" and len(shape) == 2:
        t = (torch.randn(shape[1], shape[0], dtype=torch.float64) * scale).to(
            device=device, dtype=dtype).t()
    else:
        t = (torch.randn(shape, dtype=torch.float64) * scale).to(device=device, dtype=dtype)
    return t.requires_grad_(requires_grad)


def as_reference(*tensors):
    """float64 leaf copies of the inputs, with the same requires_grad."""
    return [None if t is None else t.detach().to(torch.float64).requires_grad_(t.requires_grad)
            for t in tensors]


def grads(output, inputs, grad_output=None):
    """Gradients of output w.r.t. those inputs that require grad (None for the others)."""
    wanted = [t for t in inputs if t is not None and t.requires_grad]
    got = iter(torch.autograd.grad(output, wanted, grad_output))
    return [next(got) if t is not None and t.requires_grad else None for t in inputs]
