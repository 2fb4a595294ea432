"""The Triton backend: kernels plus launchers with the internal interface described in
fastgan/backends/pytorch.py. Imported only when a Triton path runs, so fastgan imports
where triton is not installed."""

from fastgan.backends.triton.dense import dense_bwd, dense_fwd
from fastgan.backends.triton.gan_loss import gan_loss_fwd
from fastgan.backends.triton.pointwise_loss import pointwise_loss_fwd

__all__ = ["dense_bwd", "dense_fwd", "gan_loss_fwd", "pointwise_loss_fwd"]
