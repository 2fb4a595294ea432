"""The GAN losses in one launch: mean BCE(a, target_a) [+ mean BCE(b, target_b)] and the
gradients with respect to a and b.

The discriminator loss passes real logits as a and fake logits as b; the non-saturating
generator loss passes fake logits as a with target 1. One program walks both arrays in a
fixed order, so the loss is deterministic and the backward is a single scale.
"""

import torch
import triton
import triton.language as tl

from fastgan.backends.common import result_dtype
from fastgan.backends.triton import _math

_BLOCK = 1024


@triton.jit
def _mean_bce_segment(x_ptr, n, stride, target: tl.constexpr, g_ptr, NEED_GRAD: tl.constexpr,
                      ACC_DTYPE: tl.constexpr, BLOCK: tl.constexpr):
    total = tl.zeros((BLOCK,), dtype=ACC_DTYPE)
    inv_n = 1.0 / n.to(ACC_DTYPE)  # n == 0 gives a NaN mean, as torch
    for start in range(0, n, BLOCK):
        i = start + tl.arange(0, BLOCK).to(tl.int64)
        mask = i < n
        x = tl.load(x_ptr + i * stride, mask=mask, other=0.0).to(ACC_DTYPE)
        loss = (1.0 - target) * x - _math.log_sigmoid(x)  # torch's formula: same inf/NaN
        total += tl.where(mask, loss, 0.0)
        if NEED_GRAD:
            g = (_math.sigmoid(x) - target) * inv_n
            tl.store(g_ptr + i, _math.cast(g, g_ptr.dtype.element_ty), mask=mask)
    return tl.sum(total, axis=0) * inv_n


# Sizes are never specialised (a size of 1 would become a constexpr); the targets are
# constexpr so they stay exact in fp64 (a float argument would be rounded to fp32).
@triton.jit(do_not_specialize=["n_a", "n_b"])
def gan_loss_kernel(
    a_ptr, b_ptr, loss_ptr, ga_ptr, gb_ptr,
    n_a, n_b, stride_a, stride_b,
    TARGET_A: tl.constexpr, TARGET_B: tl.constexpr,
    HAS_B: tl.constexpr, NEED_GA: tl.constexpr, NEED_GB: tl.constexpr,
    ACC_DTYPE: tl.constexpr, BLOCK: tl.constexpr,
):
    loss = _mean_bce_segment(a_ptr, n_a, stride_a, TARGET_A, ga_ptr, NEED_GA, ACC_DTYPE, BLOCK)
    if HAS_B:
        loss += _mean_bce_segment(b_ptr, n_b, stride_b, TARGET_B, gb_ptr, NEED_GB, ACC_DTYPE,
                                  BLOCK)
    tl.store(loss_ptr, _math.cast(loss, loss_ptr.dtype.element_ty))


def gan_loss_fwd(a, target_a, b, target_b, need_grad_a, need_grad_b):
    out_dtype = result_dtype(a, b)
    loss = torch.empty((), device=a.device, dtype=out_dtype)
    grad_a = torch.empty(a.shape if need_grad_a else (0,), device=a.device, dtype=a.dtype)
    has_b = b is not None
    need_grad_b = need_grad_b and has_b
    grad_b = torch.empty(b.shape if need_grad_b else (0,), device=a.device,
                         dtype=b.dtype if has_b else a.dtype)
    b_arg = b if has_b else a
    gan_loss_kernel[(1,)](
        a, b_arg, loss, grad_a, grad_b,
        a.numel(), b_arg.numel(), a.stride(0), b_arg.stride(0),
        TARGET_A=float(target_a), TARGET_B=float(target_b),
        HAS_B=has_b, NEED_GA=need_grad_a, NEED_GB=need_grad_b,
        ACC_DTYPE=tl.float64 if out_dtype == torch.float64 else tl.float32, BLOCK=_BLOCK,
    )
    return loss, grad_a, grad_b
