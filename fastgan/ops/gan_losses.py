"""gan_d_loss and gan_g_loss: the GAN's BCE-with-logits losses, each with its gradients
from one kernel launch (fastgan/backends/triton/gan_loss.py, or csrc/ on the CPU).

    gan_d_loss = mean BCE(real_logits, real_target) + mean BCE(fake_logits, fake_target)
    gan_g_loss = mean BCE(fake_logits, 1)          (the non-saturating generator loss)

real_target < 1 is one-sided label smoothing.
"""

import torch
from torch import Tensor

from fastgan.backends.common import result_dtype
from fastgan.backends.select import implementation
from fastgan.ops import checks
from fastgan.ops._library import (
    LossWithSavedGrads,
    define_public_op,
    dispatch,
    register_saved_grad_autograd,
)


def _forward(a, target_a, b, target_b, need_grad_a, need_grad_b):
    """(mean BCE(a, target_a) [+ mean BCE(b, target_b)], d/da, d/db); unrequested
    gradients come back empty."""
    loss, grad_a, grad_b = implementation(a.device).gan_loss_fwd(
        a.reshape(-1), target_a, None if b is None else b.reshape(-1), target_b,
        need_grad_a, need_grad_b and b is not None)
    return (loss, grad_a.view(a.shape) if need_grad_a else grad_a,
            grad_b.view(b.shape) if need_grad_b and b is not None else grad_b)


@torch.library.custom_op("fastgan::gan_loss_fwd", mutates_args=())
def gan_loss_fwd(a: Tensor, target_a: float, b: Tensor | None, target_b: float,
                 need_grad_a: bool, need_grad_b: bool) -> tuple[Tensor, Tensor, Tensor]:
    return _forward(a, target_a, b, target_b, need_grad_a, need_grad_b)


@gan_loss_fwd.register_fake
def _(a, target_a, b, target_b, need_grad_a, need_grad_b):
    grad_b = b.new_empty(b.shape) if need_grad_b and b is not None else a.new_empty((0,))
    return (a.new_empty((), dtype=result_dtype(a, b)),
            a.new_empty(a.shape if need_grad_a else (0,)), grad_b)


register_saved_grad_autograd(gan_loss_fwd, "gan_loss", {0: 0, 2: 1})


def _loss(name, a, target_a, b, target_b):
    """The loss, with the gradients the logits need computed in the same launch."""
    need_a = a.requires_grad and torch.is_grad_enabled()
    need_b = b is not None and b.requires_grad and torch.is_grad_enabled()
    inputs = (a,) if b is None else (a, b)

    def compute(a, b=None):
        loss, grad_a, grad_b = _forward(a, target_a, b, target_b, need_a, need_b)
        return loss, (grad_a if need_a else None, grad_b if need_b else None)[:len(inputs)]

    return dispatch(
        "gan_loss", inputs,
        registered=lambda: torch.ops.fastgan.gan_loss_fwd(a, target_a, b, target_b, need_a,
                                                          need_b)[0],
        native_args=(a, target_a, b, target_b),
        autograd=lambda: LossWithSavedGrads.apply(name, compute, *inputs),
        plain=lambda: compute(*inputs)[0])


def gan_d_loss(real_logits: Tensor, fake_logits: Tensor, real_target: float = 1.0,
               fake_target: float = 0.0) -> Tensor:
    """Discriminator loss: mean BCE(real, real_target) + mean BCE(fake, fake_target),
    loss and both gradients from one kernel launch. real_target < 1 is one-sided label
    smoothing."""
    checks.check_float_tensor("real_logits", real_logits)
    checks.check_float_tensor("fake_logits", fake_logits)
    checks.check_same_device("real_logits", real_logits, fake_logits=fake_logits)
    checks.check_number("real_target", real_target)
    checks.check_number("fake_target", fake_target)
    return _loss("gan_d_loss", real_logits, float(real_target), fake_logits,
                 float(fake_target))


def gan_g_loss(fake_logits: Tensor) -> Tensor:
    """Non-saturating generator loss: mean BCE(fake, 1), loss and gradient in one launch."""
    checks.check_float_tensor("fake_logits", fake_logits)
    return _loss("gan_g_loss", fake_logits, 1.0, None, 0.0)


define_public_op(
    "gan_d_loss(Tensor real_logits, Tensor fake_logits, float real_target=1.0, "
    "float fake_target=0.0) -> Tensor",
    gan_d_loss,
)
define_public_op("gan_g_loss(Tensor fake_logits) -> Tensor", gan_g_loss)
