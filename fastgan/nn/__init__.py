"""Modules built on the fused ops, and the one-line ways to run them in someone else's model.

    FusedLinear                   nn.Linear + activation as one fused layer
    fuse(model), unfuse(model)    fold each nn.Linear + activation pair of a model into one
    BCEWithLogitsLoss, MSELoss    torch's loss modules, running the fused losses
    patched_losses()              F.binary_cross_entropy_with_logits / F.mse_loss, in a block
"""

from fastgan.nn.fusion import FoldedActivation, FuseReport, fuse, fuse_report, unfuse
from fastgan.nn.linear import FusedLinear
from fastgan.nn.losses import BCEWithLogitsLoss, MSELoss, patched_losses

__all__ = ["BCEWithLogitsLoss", "FoldedActivation", "FuseReport", "FusedLinear", "MSELoss",
           "fuse", "fuse_report", "patched_losses", "unfuse"]
