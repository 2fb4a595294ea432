"""fastgan: fused ops and a fast trainer for autoencoders and conditional GANs."""

from fastgan import nn, ops

__version__ = "0.1.0"
__all__ = ["nn", "ops", "__version__"]
