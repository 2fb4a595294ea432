"""Numerically careful scalar math for the kernels, from tl primitives only (libdevice
does not run in Triton's interpreter, and the interpreter is how CPU CI tests kernels)."""

import triton
import triton.language as tl


@triton.jit
def log1p(u):
    # Goldberg's trick: exact to a few ulp, also where 1 + u rounds to 1.
    w = 1.0 + u
    exact = w == 1.0
    return tl.where(exact, u, tl.log(w) * (u / tl.where(exact, 1.0, w - 1.0)))


@triton.jit
def expm1(y):
    # Kahan's trick, the companion of log1p above.
    u = tl.exp(y)
    exact = (u == 1.0) | (u == 0.0)
    ratio = y / tl.where(exact, 1.0, tl.log(u))
    return tl.where(u == 1.0, y, tl.where(u == 0.0, -1.0, (u - 1.0) * ratio))


@triton.jit
def log_sigmoid(x):
    # min(x, 0) - log1p(exp(-|x|)): finite for any finite x, -inf at -inf, as torch.
    return tl.minimum(x, 0.0) - log1p(tl.exp(-tl.abs(x)))


@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def tanh(x):
    em = expm1(-2.0 * tl.abs(x))
    t = -em / (2.0 + em)
    return tl.where(x < 0, -t, t)
