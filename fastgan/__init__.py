"""fastgan: fused ops and a fast trainer for autoencoders and conditional GANs.

`import fastgan`, `import fastgan.ops` and `import fastgan.nn` load the ops and layers alone;
`fastgan.load` and `fastgan.Run` bring in the rest of the trainer's modules on first use.
"""

from importlib import metadata

from fastgan import nn, ops


def _version() -> str:
    try:
        return metadata.version("fastgan")
    except metadata.PackageNotFoundError:  # a source checkout on sys.path, never installed
        from pathlib import Path

        try:
            import tomllib
        except ImportError:  # Python 3.10
            import tomli as tomllib
        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        return tomllib.loads(pyproject.read_text())["project"]["version"]


__version__ = _version()
__all__ = ["Run", "load", "nn", "ops", "__version__"]


def __getattr__(name: str):
    if name in ("Run", "load"):
        from fastgan import api

        return getattr(api, name)
    raise AttributeError(f"module 'fastgan' has no attribute {name!r}")
