"""fastgan: fused ops and a fast trainer for autoencoders and conditional GANs.

`import fastgan`, `import fastgan.ops` and `import fastgan.nn` load the ops and layers alone;
`fastgan.load` and `fastgan.Run` bring in the rest of the trainer's modules on first use.
"""

from fastgan import nn, ops

__version__ = "0.1.0"
__all__ = ["Run", "load", "nn", "ops", "__version__"]


def __getattr__(name: str):
    if name in ("Run", "load"):
        from fastgan import api

        return getattr(api, name)
    raise AttributeError(f"module 'fastgan' has no attribute {name!r}")
