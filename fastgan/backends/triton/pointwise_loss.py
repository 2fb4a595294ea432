"""Pointwise losses (BCE-with-logits, MSE) with their gradients in the same pass.

One kernel reads input and target once and writes the loss (elementwise, or one partial
sum per program) and the requested gradients. Operands are 2-D (R, C) views with any
strides, so broadcast weight / pos_weight (stride 0) and transposed inputs cost no copy.
"""

import torch
import triton
import triton.language as tl

from fastgan.backends.codes import LOSS_CODES, REDUCTION_CODES
from fastgan.backends.common import result_dtype
from fastgan.backends.triton import _math

# The codes of fastgan/backends/codes.py, as compile-time constants for the kernel.
BCE_WITH_LOGITS = tl.constexpr(LOSS_CODES["bce_with_logits"])
NO_REDUCTION = tl.constexpr(REDUCTION_CODES["none"])
MEAN = tl.constexpr(REDUCTION_CODES["mean"])

_BLOCK = 1024
_ONE_PROGRAM_MAX = 16 * _BLOCK  # up to this size one program reduces in a fixed order
_MAX_PROGRAMS = 1024


@triton.jit(do_not_specialize=["numel"])  # so numel == 1 is not turned into a constexpr
def pointwise_loss_kernel(
    x_ptr, t_ptr, w_ptr, pw_ptr, loss_ptr, gx_ptr, gt_ptr,
    numel, C,
    stride_x0, stride_x1, stride_t0, stride_t1,
    stride_w0, stride_w1, stride_pw0, stride_pw1,
    LOSS: tl.constexpr, REDUCTION: tl.constexpr, HAS_WEIGHT: tl.constexpr,
    HAS_POS_WEIGHT: tl.constexpr, NEED_GX: tl.constexpr, NEED_GT: tl.constexpr,
    ACC_DTYPE: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    if REDUCTION == MEAN:  # computed here so fp64 inputs get an fp64 scale
        reduce_scale = 1.0 / numel.to(ACC_DTYPE)
    else:
        reduce_scale = 1.0
    step = tl.num_programs(0) * BLOCK
    total = tl.zeros((BLOCK,), dtype=ACC_DTYPE)
    for start in range(pid * BLOCK, numel, step):
        i = start + tl.arange(0, BLOCK).to(tl.int64)
        mask = i < numel
        r = i // C
        c = i % C
        x = tl.load(x_ptr + r * stride_x0 + c * stride_x1, mask=mask, other=0.0).to(ACC_DTYPE)
        t = tl.load(t_ptr + r * stride_t0 + c * stride_t1, mask=mask, other=0.0).to(ACC_DTYPE)
        if LOSS == BCE_WITH_LOGITS:  # in torch's own formulation (same ±inf / NaN results)
            ls = _math.log_sigmoid(x)
            if HAS_POS_WEIGHT:
                pw = tl.load(pw_ptr + r * stride_pw0 + c * stride_pw1, mask=mask,
                             other=0.0).to(ACC_DTYPE)
                loss = (1.0 - t) * x - ((pw - 1.0) * t + 1.0) * ls
                gx = (pw * t + 1.0 - t) * _math.sigmoid(x) - pw * t
                gt = _math.log_sigmoid(-x) - pw * ls
            else:
                loss = (1.0 - t) * x - ls
                gx = _math.sigmoid(x) - t
                gt = -x
        else:  # MSE
            diff = x - t
            loss = diff * diff
            gx = 2.0 * diff
            gt = -gx
        scale = reduce_scale
        if HAS_WEIGHT:
            w = tl.load(w_ptr + r * stride_w0 + c * stride_w1, mask=mask, other=0.0).to(ACC_DTYPE)
            loss = loss * w
            scale = w * reduce_scale
        if REDUCTION != NO_REDUCTION:
            total += tl.where(mask, loss, 0.0)
        else:
            tl.store(loss_ptr + i, _math.cast(loss, loss_ptr.dtype.element_ty), mask=mask)
        if NEED_GX:
            tl.store(gx_ptr + i, _math.cast(gx * scale, gx_ptr.dtype.element_ty), mask=mask)
        if NEED_GT:
            tl.store(gt_ptr + i, _math.cast(gt * scale, gt_ptr.dtype.element_ty), mask=mask)
    if REDUCTION != NO_REDUCTION:
        tl.store(loss_ptr + pid, _math.cast(tl.sum(total, axis=0) * reduce_scale,
                                            loss_ptr.dtype.element_ty))


def _num_programs(numel: int) -> int:
    if numel <= _ONE_PROGRAM_MAX:
        return 1
    return min(triton.cdiv(numel, _BLOCK), _MAX_PROGRAMS)


def pointwise_loss_fwd(input, target, weight, pos_weight, loss, reduction, need_grad_input,
                       need_grad_target):
    out_dtype = result_dtype(input, target, weight, pos_weight)
    acc = tl.float64 if out_dtype == torch.float64 else tl.float32
    numel = input.numel()
    R, C = input.shape
    reduce = reduction != REDUCTION_CODES["none"]
    programs = _num_programs(numel)
    if reduce:
        # One program writes the loss itself; several write partial sums reduced below.
        if programs == 1:
            loss_buf = torch.empty((), device=input.device, dtype=out_dtype)
        else:
            partial_dtype = torch.float64 if out_dtype == torch.float64 else torch.float32
            loss_buf = torch.empty((programs,), device=input.device, dtype=partial_dtype)
    else:
        loss_buf = torch.empty((R, C), device=input.device, dtype=out_dtype)
    gx = torch.empty((R, C) if need_grad_input else (0,), device=input.device, dtype=input.dtype)
    gt = torch.empty((R, C) if need_grad_target else (0,), device=input.device,
                     dtype=target.dtype)
    if numel == 0:
        if reduce:  # torch: the mean of nothing is NaN, the sum of nothing is 0
            loss_buf.fill_(float("nan") if reduction == REDUCTION_CODES["mean"] else 0.0)
    else:
        w = weight if weight is not None else input
        pw = pos_weight if pos_weight is not None else input
        pointwise_loss_kernel[(programs,)](
            input, target, w, pw, loss_buf, gx, gt, numel, C,
            input.stride(0), input.stride(1), target.stride(0), target.stride(1),
            w.stride(0), w.stride(1), pw.stride(0), pw.stride(1),
            LOSS=loss, REDUCTION=reduction, HAS_WEIGHT=weight is not None,
            HAS_POS_WEIGHT=pos_weight is not None, NEED_GX=need_grad_input,
            NEED_GT=need_grad_target, ACC_DTYPE=acc, BLOCK=_BLOCK,
        )
    if reduce:
        loss_value = loss_buf if programs == 1 else loss_buf.sum().to(out_dtype)
    else:
        loss_value = loss_buf
    return loss_value, gx, gt
