"""Where a run runs: the device a --device flag names, what its CPU can do, whether the
data fit there, and the error for a run that cannot start as asked. Shared by the trainer,
the profiler and the benchmarks."""

import functools
import os
import platform
import re
import sys
import time

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


# The x86 vector extensions that decide how fast fastgan's CPU kernels and GEMMs run, as
# /proc/cpuinfo names them.
CPU_EXTENSIONS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
# Without one of these a CPU has no bf16 arithmetic: ATen converts each element and runs a
# bf16 GEMM 100x slower than the fp32 one (measured on an AVX2-only AMD EPYC).
BF16_EXTENSIONS = ("avx512_bf16", "amx_bf16")


@functools.cache
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo; empty where there is none (not Linux)."""
    fields = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def cpu_model() -> str:
    return _cpuinfo().get("model name") or platform.processor() or "unknown CPU"


def device_slug(name: str) -> str:
    """'Intel(R) Xeon(R) Processor, 2 cores' -> 'intel-xeon-processor-2cores'."""
    name = re.sub(r"\((r|tm)\)", "", name.lower())
    name = re.sub(r"(\d+) cores", r"\1cores", name)
    return re.sub(r"[^a-z0-9]+", "-", name).strip("-")


def cpu_extensions() -> dict[str, bool]:
    """Which of CPU_EXTENSIONS the CPU has."""
    flags = set(_cpuinfo().get("flags", "").split())
    return {name: name in flags for name in CPU_EXTENSIONS}


def check_precision(precision: str, device: torch.device) -> None:
    """bf16 on a CPU without bf16 instructions: refuse, rather than run 100x slower."""
    if precision != "bf16" or device.type != "cpu" or platform.machine() not in ("x86_64", "AMD64"):
        return
    extensions = cpu_extensions()
    if not any(extensions[name] for name in BF16_EXTENSIONS):
        raise SetupError(f"--precision bf16: this CPU ({cpu_model()}) has no bf16 instructions "
                         f"({' or '.join(BF16_EXTENSIONS)}), so bf16 runs far slower than fp32; "
                         "use --precision fp32")


def use_fp32_policy(device: torch.device, tf32: bool = True) -> str:
    """fastgan's fp32 policy, returned as torch's float32 matmul precision: on CUDA, fp32
    matmuls run as TF32 on the tensor cores (torch's "high"), as most training frameworks
    default to, unless `tf32` is False (strict IEEE fp32, torch's "highest"). The setting is
    process-wide: cuBLAS and fastgan's Triton kernels both follow it. The CPU's is left as it
    is: it has no TF32."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high" if tf32 else "highest")
    return torch.get_float32_matmul_precision()


def _cpu_ticks() -> tuple[int, int, int]:
    """(busy, total) clock ticks of all CPUs from /proc/stat, and this process's own."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle and iowait
    with open("/proc/self/stat") as own:
        # utime and stime follow the command name, which may hold spaces: split after it.
        after_name = own.read().rsplit(")", 1)[1].split()
    return sum(fields) - idle, sum(fields), int(after_name[11]) + int(after_name[12])


def busy_cores_elsewhere(seconds: float = 0.3) -> float | None:
    """How many cores other processes kept busy over `seconds`; None where /proc is missing."""
    try:
        busy0, total0, own0 = _cpu_ticks()
        time.sleep(seconds)
        busy1, total1, own1 = _cpu_ticks()
    except (OSError, ValueError, IndexError):
        return None
    cores = os.cpu_count() or 1
    ticks_per_core = (total1 - total0) / cores
    if ticks_per_core <= 0:
        return None
    return max(0.0, (busy1 - busy0 - (own1 - own0)) / ticks_per_core)


def fit_threads_to_load(device: torch.device) -> None:
    """On the CPU, leave the cores other processes keep busy at start-up to them: torch's
    OpenMP threads spin-wait for each other, and one competing busy process on 2 cores cut a
    2-thread run to 27% of its speed, where 1 thread kept 50% (README, "A shared machine").
    Left alone when OMP_NUM_THREADS says how many threads to use."""
    if device.type != "cpu" or "OMP_NUM_THREADS" in os.environ:
        return
    elsewhere = busy_cores_elsewhere()
    threads = torch.get_num_threads()
    if elsewhere is None or threads <= 1:
        return
    fitted = max(1, min(threads, (os.cpu_count() or threads) - round(elsewhere)))
    if fitted < threads:
        torch.set_num_threads(fitted)
        print(f"fastgan: other processes keep {elsewhere:.1f} of {os.cpu_count()} cores busy: "
              f"training on {fitted} thread{'s' if fitted > 1 else ''}, not {threads} "
              "(OMP_NUM_THREADS=N to choose)", file=sys.stderr)


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
