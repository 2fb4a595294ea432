"""`fastgan profile`: a profiling session of one training phase's steady state.

    warm-up      WARMUP_STEPS steps (compilation, caches, allocator)
    timed        `steps` steps on the wall clock, no profiler: the iteration time, samples/s
    counted      one step under torch.utils.flop_counter, of an eager twin of the run:
                 FLOPs, and fastgan ops' bytes
    profiled     `steps` steps under torch.profiler: trace.json

and NVML sampled every 50 ms throughout (CUDA). It writes to `out`: trace.json, report.md
(fastgan.profile_report), summary.json, and on CUDA nvml.csv and nvml.png.

latent-cgan's GAN phase starts on an untrained autoencoder: its step runs the same shapes and
kernels as after the autoencoder phase, so the profile skips that phase's thousands of steps.
"""

import dataclasses
import functools
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import torch
from torch import Tensor
from torch.profiler import _utils as profiler_utils

from fastgan import config as cfg
from fastgan.backends.select import backend_for
from fastgan.data import Dataset, load_dataset
from fastgan.devices import SetupError, check_fits, check_precision, resolve_device
from fastgan.files import write_json
from fastgan.perf import nvml, roofline
from fastgan.perf.profile_report import fastgan_op_rows, write_report
from fastgan.perf.results import device_name, device_slug
from fastgan.perf.trace import Breakdown, analyze, read_trace
from fastgan.step import Training

WARMUP_STEPS = 20
DEFAULT_STEPS = 30
PHASES = ("ae", "gan")
PROFILE_FILES = ("trace.json", "report.md", "summary.json", "nvml.csv", "nvml.png")


def step_for(training: Training) -> Callable[[], dict[str, Tensor]]:
    """The iteration the session times and profiles: one call is one training step of the
    current phase. The one place that picks the training engine."""
    return training.train_step


def default_phase(config: cfg.TrainConfig) -> str:
    """The mode's steady state: the GAN phase, unless only an autoencoder trains."""
    return "ae" if config.mode == "ae" else "gan"


def enter_phase(training: Training, phase: str) -> None:
    """Move the step counter to the start of `phase` (no steps run)."""
    config = training.config
    if phase == "ae" and config.mode == "cgan" or phase == "gan" and config.mode == "ae":
        raise cfg.ConfigError(f"--phase: --mode {config.mode} has no {phase} phase")
    training.step = 0 if phase == "ae" else config.ae_phase_steps


def count_iteration(config: cfg.TrainConfig, data: Dataset, step: int
                    ) -> tuple[roofline.OpCounts, int]:
    """FLOPs and op bytes of one training iteration at `step`, and its bytes lower bound.
    Counted on a fresh eager run of the torch engine (no compile, no CUDA graph, not native):
    a graph replay dispatches no ops to count, nor does the native engine's one call name
    fastgan's ops, and the run being measured is left untouched. Every engine does the same
    GEMMs."""
    config = dataclasses.replace(config, compile=False, cuda_graphs=False, engine="torch")
    training = Training(config, data, data.x.device)
    training.step = step
    training.train_step()  # a phase's first step makes its tables (latent-cgan: the latents)
    training.step = step
    return roofline.count_ops(training.train_step), training_bytes(training)


def training_bytes(training: Training) -> int:
    """roofline.iteration_bytes for a step of the training's current phase: the parameters
    its optimizers update, the frozen weights and the batch it reads, the EMA it averages."""
    models, config = training.models, training.config
    batch = training.config.batch_size * training.data.dim * training.data.x.element_size()
    if training.phase == "ae":
        trained = list(models["autoencoder"].parameters())
        return roofline.iteration_bytes(trained) + batch
    trained = [p for name in ("generator", "discriminator") for p in models[name].parameters()]
    frozen = []
    if config.mode == "latent-cgan":
        decoder = list(models["autoencoder"].decoder.parameters())
        (trained if config.finetune_decoder else frozen).extend(decoder)
    averaged = list(models["ema_generator"].parameters())
    return roofline.iteration_bytes(trained, frozen, averaged) + batch


def default_out(config: cfg.TrainConfig, device: torch.device, phase: str) -> Path:
    slug = device_slug(device_name(device))
    data = Path(config.data_dir).name if config.data_dir else Path(config.dataset).stem
    name = f"{data}-{config.mode}-{phase}-b{config.batch_size}"
    return Path("profiles") / f"{time.strftime('%Y-%m-%d')}-{device.type}-{slug}-{name}"


def prepare_out(out: Path, overwrite: bool) -> None:
    present = [name for name in PROFILE_FILES if (out / name).exists()]
    if present and not overwrite:
        raise SetupError(f"--out: {out} holds a profile ({', '.join(present)}); pass "
                         "--overwrite to replace it")
    for name in present:
        (out / name).unlink()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SetupError(f"--out: cannot create {out}: {error.strerror}") from error


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _run(step: Callable[[], object], count: int, device: torch.device) -> float:
    """Seconds per step over `count` steps, the device's queue drained at both ends."""
    _sync(device)
    start = time.perf_counter()
    for _ in range(count):
        step()
    _sync(device)
    return (time.perf_counter() - start) / count


def _profile(step: Callable[[], object], count: int, device: torch.device,
             trace: Path) -> float:
    """Profile `count` steps, each in a ProfilerStep#N annotation (the name torch.profiler's
    schedules give steps), into the Chrome trace `trace`; returns the seconds per step."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities, record_shapes=True,
                                with_flops=True) as profiler:
        start = time.perf_counter()
        for i in range(count):
            with torch.profiler.record_function(f"ProfilerStep#{i}"):
                step()
        _sync(device)
        seconds = (time.perf_counter() - start) / count
    profiler.export_chrome_trace(str(trace))
    return seconds


class _NoSampler:
    """Stands in for nvml.Sampler where there is no NVML: samples nothing."""
    samples: list = []

    def __init__(self, reason: str):
        self.reason = reason

    def mark(self, phase: str) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def open_sampler(device: torch.device):
    if device.type != "cuda":
        return _NoSampler("no NVIDIA GPU: profiled the CPU path, with no NVML samples")
    sampler = nvml.open_sampler(device.index if device.index is not None
                                else torch.cuda.current_device())
    return _NoSampler(f"no NVML samples: {sampler}") if isinstance(sampler, str) else sampler


def beaten_peaks(iteration_s: float, b: Breakdown, counts: roofline.OpCounts, nbytes: int,
                 dtype: str, peaks: roofline.Peaks) -> list[str]:
    """The measured rates that beat `peaks`: an iteration faster than its floor, a fastgan
    op above 100% of the matmul or copy peak."""
    floor_s = roofline.floor(counts.flops, nbytes, peaks, dtype).floor_s
    beaten = ([f"an iteration in {iteration_s * 1e3:.3f} ms, {iteration_s / floor_s:.2f}x its "
               f"floor"] if iteration_s < floor_s else [])
    for row in fastgan_op_rows(b, counts, peaks, dtype):
        beaten += [f"{row['op']} at {row[key]:.0%} of the {peak} peak"
                   for key, peak in (("tflops_share", "matmul"), ("gbps_share", "copy"))
                   if row[key] and row[key] > 1]
    return beaten


def profile(config: cfg.TrainConfig, steps: int = DEFAULT_STEPS, phase: str | None = None,
            out: Path | None = None, warmup: int = WARMUP_STEPS, overwrite: bool = False,
            refresh_peaks: bool = False, command: str = "fastgan profile") -> dict:
    """Run a profiling session (see the module's docstring); returns its summary, also
    written to summary.json, with "out" added."""
    device = resolve_device(config.device)
    check_precision(config.precision, device)
    phase = phase or default_phase(config)
    data = load_dataset(config.dataset, config.data_dir and Path(config.data_dir),
                        seed=config.seed)
    config = cfg.resolve_lengths(config, len(data.x))
    check_fits(data, device)
    out = out or default_out(config, device, phase)
    prepare_out(out, overwrite)
    init_for_graphs = getattr(profiler_utils, "_init_for_cuda_graphs", None)
    if device.type == "cuda" and init_for_graphs is not None:
        init_for_graphs()  # before any capture: the kernels of graph replays get traced
    training = Training(config, data.to(device), device)
    enter_phase(training, phase)
    step = step_for(training)
    sampler = open_sampler(device)
    print(f"fastgan: {getattr(sampler, 'reason', 'sampling NVML every 50 ms')}",
          file=sys.stderr)
    with sampler:
        sampler.mark("peaks")
        peaks = roofline.measure_peaks(device, refresh=refresh_peaks)
        sampler.mark("warm-up")
        _run(step, warmup, device)
        sampler.mark("timed")
        iteration_s = _run(step, steps, device)
        sampler.mark("counted")
        counts, nbytes = count_iteration(config, training.data, training.step)
        sampler.mark("profiled")
        profiled_s = _profile(step, steps, device, out / "trace.json")
    breakdown = analyze(read_trace(out / "trace.json"))
    dtype = "bfloat16" if config.precision == "bf16" else "float32"
    peaks, beaten = roofline.recheck(device, peaks, functools.partial(
        beaten_peaks, iteration_s, breakdown, counts, nbytes, dtype))
    limit = roofline.floor(counts.flops, nbytes, peaks, dtype)
    plot_note = None
    if isinstance(sampler, nvml.Sampler):
        sampler.write_csv(out / "nvml.csv")
        plot_note = nvml.plot_samples(sampler.samples, out / "nvml.png")
    summary = {
        "command": command, "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": device_name(device), "device_type": device.type,
        "torch": torch.__version__, "fastgan_backend": backend_for(device),
        "mode": config.mode, "phase": phase, "batch_size": config.batch_size,
        "precision": config.precision, "warmup_steps": warmup, "steps": steps,
        "iteration_ms": iteration_s * 1e3, "profiled_iteration_ms": profiled_s * 1e3,
        "samples_per_s": config.batch_size / iteration_s,
        "flops_per_iteration": counts.flops, "bytes_per_iteration": nbytes,
        "floor_ms": limit.floor_s * 1e3, "bound": limit.bound,
        "compute_ms": limit.compute_s * 1e3, "memory_ms": limit.memory_s * 1e3,
        "launch_ms": limit.launch_s * 1e3, "floor_dtype": dtype,
        "peaks": {"matmul_tflops": peaks.matmul_tflops, "copy_gbps": peaks.copy_gbps,
                  "graph_launch_us": peaks.graph_launch_s and peaks.graph_launch_s * 1e6,
                  "measured": peaks.measured},
        "peaks_unreliable": roofline.unreliable_line(beaten) if beaten else None,
        "nvml": None if isinstance(sampler, _NoSampler) else len(sampler.samples),
        "nvml_note": getattr(sampler, "reason", None), "plot_note": plot_note,
    }
    write_report(out / "report.md", summary, breakdown, counts, peaks)
    write_json(out / "summary.json", summary)
    return {**summary, "out": str(out)}
