"""fastgan's fused ops, also registered as torch.ops.fastgan.<name>.

Each runs as Triton kernels on CUDA tensors and as csrc/ C++ kernels on CPU tensors
(PyTorch fallback where no compiler is available); FASTGAN_BACKEND forces one path.
"""

from fastgan.ops.fused_dense import fused_dense
from fastgan.ops.gan_losses import gan_d_loss, gan_g_loss
from fastgan.ops.pointwise_losses import bce_with_logits, mse_loss

__all__ = ["bce_with_logits", "fused_dense", "gan_d_loss", "gan_g_loss", "mse_loss"]
