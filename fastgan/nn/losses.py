"""Loss modules and functional losses that run fastgan's fused losses: drop-ins for torch's.

Each takes torch's arguments. Calls the fused op covers (floating-point tensors on one
device, a target of the input's shape, no gradient for weight or pos_weight, no
F.mse_loss weight) run fastgan.ops; any other call goes to torch's own function, which
gives torch's result or torch's error. Like the ops, they do not support double backward.
"""

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn import _reduction

from fastgan import ops
from fastgan.backends.codes import REDUCTIONS
from fastgan.ops.checks import FLOAT_DTYPES

# Taken at import, so a fallback inside patched_losses() reaches torch, not the patch.
_torch_bce_with_logits = F.binary_cross_entropy_with_logits
_torch_mse_loss = F.mse_loss


def _float_tensor(value) -> bool:
    return isinstance(value, Tensor) and value.dtype in FLOAT_DTYPES


def _covered(input, target, reduction: str, extras=()) -> bool:
    """True when the fused op computes what torch would for this call: float tensors on
    one device, target of input's shape, and extras (weight, pos_weight) broadcastable to
    input and needing no gradient."""
    if not (_float_tensor(input) and _float_tensor(target) and reduction in REDUCTIONS
            and target.shape == input.shape and target.device == input.device):
        return False
    for extra in extras:
        if extra is None:
            continue
        if not _float_tensor(extra) or extra.device != input.device or extra.requires_grad:
            return False
        try:
            if torch.broadcast_shapes(extra.shape, input.shape) != input.shape:
                return False
        except RuntimeError:
            return False
    return True


def binary_cross_entropy_with_logits(input: Tensor, target: Tensor, weight: Tensor | None = None,
                                     size_average: bool | None = None,
                                     reduce: bool | None = None, reduction: str = "mean",
                                     pos_weight: Tensor | None = None) -> Tensor:
    """F.binary_cross_entropy_with_logits, run by fastgan.ops.bce_with_logits where it
    covers the call."""
    if size_average is not None or reduce is not None:
        reduction = _reduction.legacy_get_string(size_average, reduce)
    if _covered(input, target, reduction, (weight, pos_weight)):
        return ops.bce_with_logits(input, target, weight, reduction=reduction,
                                   pos_weight=pos_weight)
    return _torch_bce_with_logits(input, target, weight, reduction=reduction,
                                  pos_weight=pos_weight)


def mse_loss(input: Tensor, target: Tensor, size_average: bool | None = None,
             reduce: bool | None = None, reduction: str = "mean",
             weight: Tensor | None = None) -> Tensor:
    """F.mse_loss, run by fastgan.ops.mse_loss for same-shape input and target without a
    weight (a weight, in the torch versions that take one, goes to torch)."""
    if size_average is not None or reduce is not None:
        reduction = _reduction.legacy_get_string(size_average, reduce)
    if weight is None and _covered(input, target, reduction):
        return ops.mse_loss(input, target, reduction)
    # Passed only when given: older torch versions have no weight argument.
    extra = {} if weight is None else {"weight": weight}
    return _torch_mse_loss(input, target, reduction=reduction, **extra)


class BCEWithLogitsLoss(nn.BCEWithLogitsLoss):
    """nn.BCEWithLogitsLoss (same arguments, buffers and results) computing the loss and
    its gradient in one fused pass."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return binary_cross_entropy_with_logits(input, target, self.weight,
                                                reduction=self.reduction,
                                                pos_weight=self.pos_weight)


class MSELoss(nn.MSELoss):
    """nn.MSELoss (same arguments and results) computing the loss and its gradient in one
    fused pass."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return mse_loss(input, target, reduction=self.reduction)


@contextlib.contextmanager
def patched_losses() -> Iterator[None]:
    """Within the block, F.binary_cross_entropy_with_logits and F.mse_loss (so also
    torch's nn.BCEWithLogitsLoss and nn.MSELoss) run fastgan's fused losses, for code you
    do not control. torch's functions come back on exit, also after an exception.

    It patches the torch.nn.functional module: code that took the functions out of it
    before the block (`from torch.nn.functional import mse_loss`) keeps torch's. Not
    thread-local: other threads see the patch while the block runs.
    """
    saved = F.binary_cross_entropy_with_logits, F.mse_loss
    F.binary_cross_entropy_with_logits = binary_cross_entropy_with_logits
    F.mse_loss = mse_loss
    try:
        yield
    finally:
        F.binary_cross_entropy_with_logits, F.mse_loss = saved
