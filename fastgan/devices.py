"""Where a run runs: the device a --device flag names, whether the data fit there, and the
error for a run that cannot start as asked. Shared by the trainer and the profiler."""

import torch

from fastgan.data import Dataset


class SetupError(ValueError):
    """A run that cannot start as asked (--out, --device): the message says why."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SetupError("--device cuda: no CUDA GPU is available to torch")
    return torch.device(name)


def use_fp32_policy(device: torch.device, tf32: bool = True) -> str:
    """fastgan's fp32 policy, returned as torch's float32 matmul precision: on CUDA, fp32
    matmuls run as TF32 on the tensor cores (torch's "high"), as most training frameworks
    default to, unless `tf32` is False (strict IEEE fp32, torch's "highest"). The setting is
    process-wide: cuBLAS and fastgan's Triton kernels both follow it. The CPU's is left as it
    is: it has no TF32."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high" if tf32 else "highest")
    return torch.get_float32_matmul_precision()


def check_fits(data: Dataset, device: torch.device) -> None:
    """The training set lives on the device as tensors; say so before training when the
    GPU has too little free memory for it (and the models, batches and optimizer state,
    hence the half)."""
    if device.type != "cuda":
        return
    tensors = [t for t in (data.x, data.y, data.test_x, data.test_y) if t is not None]
    need = sum(t.numel() * t.element_size() for t in tensors)
    free, _ = torch.cuda.mem_get_info(device)
    if need > free // 2:
        raise SetupError(f"--device cuda: the dataset takes {need / 2**20:,.0f} MiB and fastgan "
                         f"keeps it on the GPU, which has {free / 2**20:,.0f} MiB free; "
                         "use a GPU with more memory or a smaller dataset")
