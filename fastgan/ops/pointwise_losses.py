"""bce_with_logits and mse_loss: each loss and its gradients come out of one pass.

The forward kernel (fastgan/backends/triton/pointwise_loss.py, or csrc/ on the CPU) writes the
loss and d loss / d input (and d loss / d target when the target requires grad); the
backward only scales them by the incoming gradient.
"""

import math

import torch
from torch import Tensor
from torch.nn import _reduction

from fastgan.backends.codes import LOSS_CODES, REDUCTION_CODES, REDUCTIONS
from fastgan.backends.common import result_dtype
from fastgan.backends.select import implementation
from fastgan.ops import checks
from fastgan.ops._library import (
    LossWithSavedGrads,
    define_public_op,
    dispatch,
    register_saved_grad_autograd,
)


def _forward(input, target, weight, pos_weight, loss, reduction, need_grad_input,
             need_grad_target):
    """(loss, d loss / d input, d loss / d target); unrequested gradients come back empty."""
    shape = input.shape
    rows, cols = math.prod(shape[:-1]), (shape[-1] if shape else 1)

    def as_2d(t):  # (rows, cols) views where strides allow; broadcasts keep stride 0
        return None if t is None else t.expand(shape).reshape(rows, cols)

    value, grad_input, grad_target = implementation(input.device).pointwise_loss_fwd(
        as_2d(input), as_2d(target), as_2d(weight), as_2d(pos_weight), LOSS_CODES[loss],
        REDUCTION_CODES[reduction], need_grad_input, need_grad_target)
    if reduction == "none":
        value = value.view(shape)
    return (value, grad_input.view(shape) if need_grad_input else grad_input,
            grad_target.view(shape) if need_grad_target else grad_target)


@torch.library.custom_op("fastgan::pointwise_loss_fwd", mutates_args=())
def pointwise_loss_fwd(input: Tensor, target: Tensor, weight: Tensor | None,
                       pos_weight: Tensor | None, loss: str, reduction: str,
                       need_grad_input: bool, need_grad_target: bool
                       ) -> tuple[Tensor, Tensor, Tensor]:
    return _forward(input, target, weight, pos_weight, loss, reduction, need_grad_input,
                    need_grad_target)


@pointwise_loss_fwd.register_fake
def _(input, target, weight, pos_weight, loss, reduction, need_grad_input, need_grad_target):
    value = input.new_empty(input.shape if reduction == "none" else (),
                            dtype=result_dtype(input, target, weight, pos_weight))
    return (value, input.new_empty(input.shape if need_grad_input else (0,)),
            target.new_empty(target.shape if need_grad_target else (0,)))


register_saved_grad_autograd(pointwise_loss_fwd, "pointwise_loss", {0: 0, 1: 1})


def _loss(input, target, weight, pos_weight, loss, reduction):
    """The loss, with the gradients the inputs need computed in the same pass."""
    need_input = input.requires_grad and torch.is_grad_enabled()
    need_target = target.requires_grad and torch.is_grad_enabled()

    def compute(input, target):
        value, grad_input, grad_target = _forward(input, target, weight, pos_weight, loss,
                                                  reduction, need_input, need_target)
        return value, (grad_input if need_input else None, grad_target if need_target else None)

    return dispatch(
        "pointwise_loss", (input, target, weight, pos_weight),
        registered=lambda: torch.ops.fastgan.pointwise_loss_fwd(
            input, target, weight, pos_weight, loss, reduction, need_input, need_target)[0],
        native_args=(input, target, weight, pos_weight, LOSS_CODES[loss],
                     REDUCTION_CODES[reduction]),
        autograd=lambda: LossWithSavedGrads.apply(loss, compute, input, target),
        plain=lambda: compute(input, target)[0])


def _check_pair(input, target, reduction):
    checks.check_float_tensor("input", input)
    checks.check_float_tensor("target", target)
    checks.check_same_device("input", input, target=target)
    checks.check_same_shape("target", target, "input", input)
    checks.check_choice("reduction", reduction, REDUCTIONS)


# ---------------------------------------------------------------------------------------
# bce_with_logits


def _bce_with_logits(input, target, weight=None, pos_weight=None, reduction="mean"):
    _check_pair(input, target, reduction)
    for name, value in (("weight", weight), ("pos_weight", pos_weight)):
        if value is not None:
            checks.check_float_tensor(name, value)
            checks.check_same_device("input", input, **{name: value})
            checks.check_broadcastable(name, value, "input", input)
            checks.check_no_grad(name, value, "bce_with_logits")
    return _loss(input, target, weight, pos_weight, "bce_with_logits", reduction)


define_public_op(
    "bce_with_logits(Tensor input, Tensor target, Tensor? weight=None, "
    "Tensor? pos_weight=None, str reduction='mean') -> Tensor",
    _bce_with_logits,
)


def bce_with_logits(input: Tensor, target: Tensor, weight: Tensor | None = None,
                    size_average: bool | None = None, reduce: bool | None = None,
                    reduction: str = "mean", pos_weight: Tensor | None = None) -> Tensor:
    """Drop-in for F.binary_cross_entropy_with_logits (same arguments, values and
    gradients, including broadcast weight / pos_weight), with the gradient computed in the
    forward pass. Stable for logits of any size."""
    if size_average is not None or reduce is not None:
        reduction = _reduction.legacy_get_string(size_average, reduce)
    return _bce_with_logits(input, target, weight, pos_weight, reduction)


# ---------------------------------------------------------------------------------------
# mse_loss


def mse_loss(input: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """F.mse_loss for same-shape input and target, with the gradient computed in the
    forward pass."""
    _check_pair(input, target, reduction)
    return _loss(input, target, None, None, "mse", reduction)


define_public_op("mse_loss(Tensor input, Tensor target, str reduction='mean') -> Tensor",
                 mse_loss)
