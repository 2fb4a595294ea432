"""GPU telemetry while something runs: NVML samples from a background thread, as CSV rows
and as a timeline plot.

    sampler = open_sampler(cuda_index)          # a reason string instead where NVML is missing
    with sampler:                               # samples every 50 ms until the block ends
        sampler.mark("profiled")                # labels the rows that follow
        ...
    sampler.write_csv(path); plot_samples(sampler.samples, png_path)

NVML (nvidia-ml-py's pynvml) numbers GPUs its own way; the sampler reads the GPU that CUDA
calls `cuda_index`, honouring CUDA_VISIBLE_DEVICES (indices or GPU-/MIG- UUIDs). A query the
GPU does not support (power on some boards, most of them on a MIG slice) leaves its column
empty rather than stopping the sampling.
"""

import csv
import io
import os
import threading
import time
from pathlib import Path
from types import ModuleType

from fastgan.files import atomic_write

INTERVAL_S = 0.05
COLUMNS = ("time_s", "phase", "sm_util_pct", "mem_util_pct", "mem_used_mib", "power_w",
           "sm_clock_mhz", "temp_c")


def load_nvml() -> ModuleType | str:
    """pynvml, initialized; or why it cannot be used."""
    try:
        import pynvml
    except ImportError:
        return "nvidia-ml-py (pynvml) is not installed"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as error:
        return f"NVML did not start: {error}"
    return pynvml


def visible_device(cuda_index: int, visible: str | None) -> int | str:
    """NVML's name for CUDA device `cuda_index`: its NVML index, or a UUID (a "GPU-" or
    "MIG-" entry of CUDA_VISIBLE_DEVICES, `visible`)."""
    if not visible:
        return cuda_index
    entries = [entry.strip() for entry in visible.split(",")]
    if cuda_index >= len(entries):
        return cuda_index
    entry = entries[cuda_index]
    return int(entry) if entry.isdigit() else entry


def device_handle(nvml: ModuleType, cuda_index: int):
    device = visible_device(cuda_index, os.environ.get("CUDA_VISIBLE_DEVICES"))
    if isinstance(device, int):
        return nvml.nvmlDeviceGetHandleByIndex(device)
    return nvml.nvmlDeviceGetHandleByUUID(device)


class Sampler:
    """Samples one GPU every `interval` seconds in a daemon thread while in its `with` block.
    `samples` holds one dict per sample, keyed by COLUMNS (None where a query failed)."""

    def __init__(self, nvml: ModuleType, cuda_index: int = 0, interval: float = INTERVAL_S):
        self.nvml, self.interval = nvml, interval
        self.handle = device_handle(nvml, cuda_index)
        self.samples: list[dict] = []
        self.phase = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fastgan-nvml", daemon=True)
        self._start = 0.0

    def mark(self, phase: str) -> None:
        """Label the samples taken from now on with `phase`."""
        self.phase = phase

    def __enter__(self) -> "Sampler":
        self._start = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        deadline = time.perf_counter()
        while not self._stop.is_set():
            self.samples.append(self.sample())
            deadline += self.interval  # a fixed cadence, whatever a sample costs
            self._stop.wait(max(0.0, deadline - time.perf_counter()))
        self.samples.append(self.sample())  # the state at the end

    def sample(self) -> dict:
        nvml, handle = self.nvml, self.handle
        utilization = self._query(nvml.nvmlDeviceGetUtilizationRates, handle)
        memory = self._query(nvml.nvmlDeviceGetMemoryInfo, handle)
        power_mw = self._query(nvml.nvmlDeviceGetPowerUsage, handle)
        return {
            "time_s": round(time.perf_counter() - self._start, 4),
            "phase": self.phase,
            "sm_util_pct": utilization and utilization.gpu,
            "mem_util_pct": utilization and utilization.memory,
            "mem_used_mib": memory and round(memory.used / 2**20, 1),
            "power_w": power_mw and power_mw / 1000,
            "sm_clock_mhz": self._query(nvml.nvmlDeviceGetClockInfo, handle, nvml.NVML_CLOCK_SM),
            "temp_c": self._query(nvml.nvmlDeviceGetTemperature, handle,
                                  nvml.NVML_TEMPERATURE_GPU),
        }

    def _query(self, query, *args):
        try:
            return query(*args)
        except self.nvml.NVMLError:  # not supported here (MIG, some boards): an empty cell
            return None

    def write_csv(self, path: Path) -> None:
        write_samples_csv(self.samples, path)


def open_sampler(cuda_index: int, nvml: ModuleType | None = None,
                 interval: float = INTERVAL_S) -> Sampler | str:
    """A Sampler for CUDA device `cuda_index`, or the reason there is none (no pynvml, no
    NVML library or driver, no such device)."""
    nvml = nvml or load_nvml()
    if isinstance(nvml, str):
        return nvml
    try:
        return Sampler(nvml, cuda_index, interval)
    except nvml.NVMLError as error:
        return f"NVML has no handle for CUDA device {cuda_index}: {error}"


def write_samples_csv(samples: list[dict], path: Path) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in samples)
    with atomic_write(path) as file:
        file.write(text.getvalue().encode())


# ---------------------------------------------------------------------------------------
# The timeline plot (matplotlib)

PANELS = [  # (title, columns, unit)
    ("utilization", ("sm_util_pct", "mem_util_pct"), "%"),
    ("memory used", ("mem_used_mib",), "MiB"),
    ("power", ("power_w",), "W"),
    ("SM clock", ("sm_clock_mhz",), "MHz"),
    ("temperature", ("temp_c",), "°C"),
]


def plot_samples(samples: list[dict], path: Path) -> str | None:
    """Draw the samples' timeline into a PNG at `path`, one panel per quantity, the phases
    shaded; returns None, or why there is no plot (no matplotlib, no samples)."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib)"
    if not samples:
        return "no NVML samples to plot"
    times = [row["time_s"] for row in samples]
    figure, axes = plt.subplots(len(PANELS), 1, sharex=True, figsize=(9, 2 * len(PANELS)))
    for ax, (title, columns, unit) in zip(axes, PANELS, strict=True):
        for column in columns:
            points = [(t, row[column]) for t, row in zip(times, samples, strict=True)
                      if row[column] is not None]
            if points:
                ax.plot(*zip(*points, strict=True), label=column, linewidth=1)
        ax.set_ylabel(unit)
        ax.set_title(title, fontsize=9, loc="left")
        if len(columns) > 1:
            ax.legend(fontsize=7, loc="upper right")
        _shade_phases(ax, samples, labels=ax is axes[0])
    axes[-1].set_xlabel("seconds")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as file:
        figure.savefig(file, format="png", dpi=100)
    plt.close(figure)
    return None


def _shade_phases(ax, samples: list[dict], labels: bool) -> None:
    """Alternating grey bands over consecutive runs of the same phase, named when `labels`."""
    start, band = 0, 0
    for i in range(1, len(samples) + 1):
        if i < len(samples) and samples[i]["phase"] == samples[start]["phase"]:
            continue
        left, right = samples[start]["time_s"], samples[i - 1]["time_s"]
        if samples[start]["phase"]:
            ax.axvspan(left, right, color=("0.92", "0.82")[band % 2], zorder=0)
            if labels:
                ax.text((left + right) / 2, 1.02, samples[start]["phase"], fontsize=7,
                        ha="center", va="bottom", transform=ax.get_xaxis_transform())
            band += 1
        start = i
