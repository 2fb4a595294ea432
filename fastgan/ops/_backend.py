"""Which implementation runs an op: Triton, the csrc/ C++ kernels, or plain PyTorch.

FASTGAN_BACKEND = auto | triton | cpp | torch, read at every call so tests and users can
switch it at run time. Under torch.compile the choice is made when the graph is traced.
"""

import os

import torch

BACKENDS = ("auto", "triton", "cpp", "torch")

# triton.jit decides at decoration time whether a kernel runs in the interpreter, so what
# counts is the environment when fastgan's kernels were imported (which is now, or later).
TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

try:
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:  # macOS, Windows, aarch64 without a triton wheel
    HAS_TRITON = False


def requested_backend() -> str:
    name = os.environ.get("FASTGAN_BACKEND", "auto").strip().lower() or "auto"
    if name not in BACKENDS:
        raise ValueError(f"FASTGAN_BACKEND: expected one of {', '.join(BACKENDS)}, got {name!r}")
    return name


def backend_for(device: torch.device) -> str:
    """The backend that runs an op whose tensors live on `device`."""
    name = requested_backend()
    if name == "torch":
        return "torch"
    if device.type == "cuda":
        if name == "cpp":
            raise ValueError(
                "FASTGAN_BACKEND=cpp: the C++ kernels take CPU tensors, got CUDA tensors")
        if not HAS_TRITON:
            raise RuntimeError("fastgan needs triton for CUDA tensors; install triton>=3.2")
        return "triton"
    if device.type == "cpu":
        if name == "triton":
            if not (HAS_TRITON and TRITON_INTERPRET):
                raise ValueError(
                    "FASTGAN_BACKEND=triton on CPU tensors needs triton and TRITON_INTERPRET=1 "
                    "set before fastgan is imported"
                )
            return "triton"
        from fastgan.ops import _cpp

        if name == "cpp":
            _cpp.require()
            return "cpp"
        return "cpp" if _cpp.available() else "torch"
    # Other devices (mps, xpu, ...) have no fused kernels: run the PyTorch path.
    if name in ("triton", "cpp"):
        raise ValueError(f"FASTGAN_BACKEND={name}: no {name} kernels for {device.type} tensors")
    return "torch"


def result_dtype(*tensors) -> torch.dtype:
    """The dtype of a loss over these tensors (None skipped), promoted as torch does."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        if t is not None:
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 accumulation for 16- and 32-bit inputs, fp64 for fp64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# (FASTGAN_BACKEND as set, device type) -> the backend's functions. Ops run this lookup on
# every call, so it is a dict hit after the first.
_implementations: dict[tuple[str | None, str], object] = {}


def implementation(device: torch.device):
    """The module (or op namespace) with dense_fwd, dense_bwd, pointwise_loss_fwd and
    gan_loss_fwd for tensors on `device`."""
    key = (os.environ.get("FASTGAN_BACKEND"), device.type)
    impl = _implementations.get(key)
    if impl is None:
        impl = _implementations[key] = _load_implementation(backend_for(device))
    return impl


def _load_implementation(name: str):
    if name == "triton":
        import fastgan.kernels

        return fastgan.kernels
    if name == "cpp":
        from fastgan.ops import _cpp

        return _cpp.ops()
    from fastgan.ops import _torch_impl

    return _torch_impl
