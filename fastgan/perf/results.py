"""What a benchmark's JSON report records besides its rows: the machine, the software and
the command, and where the file goes: <out>/<kind>-<device-slug>-<YYYY-MM-DD>.json."""

import json
import os
import platform
from datetime import datetime
from pathlib import Path

import torch

import fastgan
from fastgan.backends.select import backend_for
from fastgan.devices import cpu_extensions, cpu_model, device_slug


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model and core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()}, {os.cpu_count()} cores"


# Environment variables that change what a benchmark measures: fastgan's kernel choices, the
# thread count, and the instruction sets MKL, oneDNN and ATen may use.
RECORDED_ENVIRONMENT = ("FASTGAN_BACKEND", "FASTGAN_NATIVE_GEMM", "OMP_NUM_THREADS",
                        "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY",
                        "TRITON_INTERPRET")


def new_report(kind: str, device: torch.device, dtype: torch.dtype, command: str) -> dict:
    """The report's header; the benchmark adds its settings and "rows"."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "kind": kind,
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "triton": triton_version,
        "python": platform.python_version(),
        "fastgan": fastgan.__version__,
        "fastgan_backend": backend_for(device),
        "dtype": str(dtype).removeprefix("torch."),
        "cpu_threads": torch.get_num_threads(),
        "cpu_model": cpu_model(),
        "cpu_extensions": cpu_extensions(),
        # Other work on the machine skews CPU timings; this says how busy it was.
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "command": command,
        "environment": {name: os.environ[name] for name in RECORDED_ENVIRONMENT
                        if name in os.environ},
        "timestamp": datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def report_path(out_dir: Path, report: dict) -> Path:
    slug = device_slug(report["device"])
    if report["device_type"] == "cpu":
        slug = f"cpu-{slug}"
    return out_dir / f"{report['kind']}-{slug}-{report['timestamp'][:10]}.json"


def write_report(path: Path, report: dict) -> None:
    # Write then rename, so a run killed mid-write leaves the previous complete file.
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(report, indent=2) + "\n")
    partial.replace(path)
