"""fastgan: fused ops and a fast trainer for autoencoders and conditional GANs."""

from fastgan import nn, ops
from fastgan.api import Run, load

__version__ = "0.1.0"
__all__ = ["Run", "load", "nn", "ops", "__version__"]
