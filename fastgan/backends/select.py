"""Which implementation runs an op: Triton, the csrc/ C++ kernels, or plain PyTorch.

FASTGAN_BACKEND = auto | triton | cpp | torch, read at every call so tests and users can
switch it at run time. Under torch.compile the choice is made when the graph is traced.
"""

import os

import torch

from fastgan.backends.common import HAS_TRITON, TRITON_INTERPRET

BACKENDS = ("auto", "triton", "cpp", "torch")

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
        from fastgan.backends import cpp

        if name == "cpp":
            cpp.require()
            return "cpp"
        return "cpp" if cpp.available() else "torch"
    # Other devices (mps, xpu, ...) have no fused kernels: run the PyTorch path.
    if name in ("triton", "cpp"):
        raise ValueError(f"FASTGAN_BACKEND={name}: no {name} kernels for {device.type} tensors")
    return "torch"


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
        from fastgan.backends import triton

        return triton
    if name == "cpp":
        from fastgan.backends import cpp

        return cpp.ops()
    from fastgan.backends import pytorch

    return pytorch
