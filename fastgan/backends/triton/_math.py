"""Numerically careful scalar math for the kernels, from tl primitives only (libdevice
does not run in Triton's interpreter, and the interpreter is how CPU CI tests kernels)."""

import triton
import triton.language as tl

from fastgan.backends.common import TRITON_INTERPRET

INTERPRETED = tl.constexpr(TRITON_INTERPRET)


@triton.jit
def cast(x, dtype: tl.constexpr):
    """x.to(dtype), rounded to nearest (ties to even) as compiled kernels round. Triton's
    interpreter (3.2 to 3.9 at least) truncates fp32 -> bf16 casts instead, up to an ulp off,
    and flushes subnormals: tanh(2.7) = 0.9910 becomes 0.9883, not 0.9922, and a saturated
    tanh 0.99609 instead of 1, whose derivative 1 - out^2 is then 0.0078, not 0. Under it,
    the bf16 bits are made here. (fp16 casts go through numpy, which rounds.)"""
    if INTERPRETED:
        if dtype == tl.bfloat16:
            bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
            rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).to(tl.uint16)
            rounded = tl.where(x == x, rounded, 0x7FC0)  # NaN: the carry could wrap it to 0
            return rounded.to(tl.bfloat16, bitcast=True)
    return x.to(dtype)


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
