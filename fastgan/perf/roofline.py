"""The roofline of a training iteration: what the device can do at best (measured peaks), what
an iteration must do (FLOPs and bytes), and the time those imply (the floor).

    peaks = measure_peaks(device)             # cached per device and torch version
    flops = count_flops(step)                 # torch.utils.flop_counter, fastgan ops included
    limit = floor(flops, nbytes, peaks)       # compute, memory and launch seconds; the floor

Peaks are measured once per machine: square matmuls of growing size (bf16 and fp32), a
large device-to-device copy, and on CUDA the launch of a one-kernel CUDA graph, each the best
of several repeats after a warm-up (timing.best_ms), since a busy machine only ever slows a
run down. They are cached in fastgan.files.cache_dir() / "peaks", keyed by the device's name
and the torch version (on the CPU also the number of threads torch uses, on CUDA whether fp32
matmuls run as TF32: the fp32 peak is measured under torch's float32 matmul precision at the
time, which the trainer's fp32 policy sets); measure_peaks(device, refresh=True) measures
again.

A rate measured later that beats its peak proves the peak wrong: recheck() then measures the
peaks once more, and what still beats them gets unreliable_line() printed instead of the
figure.
"""

import functools
import json
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import datetime

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry, register_flop_formula

import fastgan.ops  # noqa: F401  (defines torch.ops.fastgan.*, whose formulas follow)
from fastgan.files import atomic_write, cache_dir
from fastgan.perf.results import device_name, device_slug
from fastgan.perf.timing import best_ms

# The matmul peak is the best rate over these square sizes, smallest first, up to the first
# whose call takes MATMUL_LONG_MS: the rate has plateaued by then, and the CPU's whole
# measurement stays at a few seconds on 2 cores. bf16 on the CPU: AMX and AVX512-BF16
# machines run it several times faster than fp32, others far slower, hence the ladder.
MATMUL_SIZES = {"cuda": (2048, 4096, 8192, 16384), "cpu": (256, 512, 1024, 2048)}
MATMUL_LONG_MS = {"cuda": 20.0, "cpu": 100.0}
COPY_ELEMENTS = {"cuda": 2**28, "cpu": 2**24}  # float32: 1 GiB on CUDA, 64 MiB on the CPU
MATMUL_DTYPES = {"cuda": ("bfloat16", "float32"), "cpu": ("bfloat16", "float32")}
# Each measurement: at least PEAK_REPEATS timed repeats after a warm-up, and as many as fit
# in PEAK_BUDGET_MS; the fastest counts.
PEAK_REPEATS = 5
PEAK_BUDGET_MS = {"cuda": 100.0, "cpu": 200.0}
GRAPH_REPLAYS = 200  # per timed batch of back-to-back replays

# Bytes an Adam step moves per parameter element, in units of the element size: the
# backward writes the gradient; Adam reads the parameter, the gradient and both moments,
# and writes the parameter and both moments.
ADAM_ACCESSES = 8
EMA_ACCESSES = 3  # read the average and the parameter, write the average


# ---------------------------------------------------------------------------------------
# FLOPs of fastgan's ops, for torch.utils.flop_counter. Like aten::addmm's formula, only
# the GEMMs count (2 FLOPs per multiply-add): the bias, the activation and its derivative
# are O(rows * out) next to O(rows * out * in).


def _rows(shape) -> int:
    return math.prod(shape[:-1])


def _fused_dense_fwd_flops(x_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * _rows(x_shape) * weight_shape[0] * weight_shape[1]


def _fused_dense_bwd_flops(grad_shape, x_shape, weight_shape, saved_shape, activation,
                           negative_slope, need_dx, need_dw, need_db, *, out_shape=None) -> int:
    # dx = dz @ W and dw = dz.T @ x are one GEMM each; db is a column sum.
    return 2 * _rows(x_shape) * weight_shape[0] * weight_shape[1] * (need_dx + need_dw)


def _register_fastgan_formulas() -> None:
    formulas = {torch.ops.fastgan.fused_dense_fwd: _fused_dense_fwd_flops,
                torch.ops.fastgan.fused_dense_bwd: _fused_dense_bwd_flops}
    for op, formula in formulas.items():
        if op not in flop_registry:  # importlib.reload would register twice
            register_flop_formula(op)(formula)


_register_fastgan_formulas()


# ---------------------------------------------------------------------------------------
# What one call of a step computes and moves.


@dataclass
class OpCounts:
    """FLOPs of one call (all ops torch.utils.flop_counter knows, fastgan's included), and for
    each fastgan op (by schema name, e.g. "fastgan::fused_dense_fwd") its calls, FLOPs and
    the bytes of its input and output tensors: what a fused kernel must read and write."""
    flops: int
    op_calls: dict[str, int]
    op_flops: dict[str, int]
    op_bytes: dict[str, int]


class _FastganTensorBytes(TorchDispatchMode):
    """Counts calls and tensor bytes (inputs + outputs) of the torch.ops.fastgan.* ops."""

    def __init__(self):
        super().__init__()
        self.calls, self.bytes = defaultdict(int), defaultdict(int)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func._schema.name
        if name.startswith("fastgan::"):
            tensors = [t for t in torch.utils._pytree.tree_leaves((args, kwargs, out))
                       if isinstance(t, Tensor)]
            self.calls[name] += 1
            self.bytes[name] += sum(t.numel() * t.element_size() for t in tensors)
        return out


def count_ops(fn: Callable[[], object]) -> OpCounts:
    """Call fn once under torch.utils.flop_counter.FlopCounterMode and count what it does.

    Under a dispatch mode fastgan's ops take their registered torch.ops.fastgan.* path
    (fastgan.ops._library.eager), which runs the same kernels as the eager one."""
    flop_counter = FlopCounterMode(display=False)
    tensor_bytes = _FastganTensorBytes()
    with flop_counter, tensor_bytes:
        fn()
    by_op = {str(op): flops for op, flops in flop_counter.get_flop_counts()["Global"].items()}
    op_flops = {name: by_op.get(name.replace("fastgan::", "fastgan."), 0)
                for name in tensor_bytes.calls}
    return OpCounts(flop_counter.get_total_flops(), dict(tensor_bytes.calls), op_flops,
                    dict(tensor_bytes.bytes))


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of fn, by torch.utils.flop_counter (GEMMs, convolutions, attention;
    fastgan's fused_dense forward and backward included)."""
    return count_ops(fn).flops


def tensor_bytes(tensors: Iterable[Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def iteration_bytes(trained: Iterable[Tensor], read: Iterable[Tensor] = (),
                    averaged: Iterable[Tensor] = ()) -> int:
    """A lower bound on the bytes one training iteration moves to and from memory, from
    tensor sizes: each parameter Adam updates (`trained`) costs ADAM_ACCESSES accesses, each
    tensor only read once (`read`: the batch, frozen weights) one, each EMA average
    (`averaged`) EMA_ACCESSES. Activations are left out: a fused step may keep them in
    caches. Caches can also beat the bound where the state fits in them (an H100's 50 MB L2
    holds the default models' state)."""
    return (ADAM_ACCESSES * tensor_bytes(trained) + tensor_bytes(read)
            + EMA_ACCESSES * tensor_bytes(averaged))


# ---------------------------------------------------------------------------------------
# Peaks


@dataclass(frozen=True)
class Peaks:
    """A device's measured peaks: matmul TFLOP/s by dtype name, device-to-device copy GB/s
    (bytes read + written), and the seconds one launch of a one-kernel CUDA graph takes
    back to back (None on the CPU)."""
    device: str
    matmul_tflops: dict[str, float]
    copy_gbps: float
    graph_launch_s: float | None
    torch: str
    measured: str  # when, ISO 8601

    def tflops(self, dtype: str | None = None) -> float:
        """The matmul peak for `dtype` ("bfloat16", "float32"); by default bf16 where it was
        measured, else fp32. A dtype not measured gets the highest peak measured."""
        dtype = dtype or ("bfloat16" if "bfloat16" in self.matmul_tflops else "float32")
        return self.matmul_tflops.get(dtype, max(self.matmul_tflops.values()))


def peaks_path(device: torch.device):
    slug = device_slug(device_name(device))
    if device.type == "cpu":  # the CPU's peaks depend on the threads torch uses
        slug += f"-{torch.get_num_threads()}threads"
    elif torch.get_float32_matmul_precision() != "highest":  # fp32 measured as TF32
        slug += "-tf32"
    return cache_dir() / "peaks" / f"{device.type}-{slug}-torch{torch.__version__}.json"


def measure_peaks(device: torch.device, refresh: bool = False) -> Peaks:
    """The device's peaks, from the cache unless `refresh` or none is cached yet; a
    measurement is cached for the next call."""
    path = peaks_path(device)
    if path.exists() and not refresh:
        try:
            cached = Peaks(**json.loads(path.read_text()))
            if set(MATMUL_DTYPES[device.type]) <= set(cached.matmul_tflops):
                return cached
        except (ValueError, TypeError):  # an unreadable cache file: measure again
            pass
    peaks = Peaks(
        device=device_name(device),
        matmul_tflops={dtype: _matmul_tflops(device, getattr(torch, dtype))
                       for dtype in MATMUL_DTYPES[device.type]},
        copy_gbps=_copy_gbps(device),
        graph_launch_s=_graph_launch_seconds(device) if device.type == "cuda" else None,
        torch=torch.__version__,
        measured=datetime.now().astimezone().isoformat(timespec="seconds"))
    with atomic_write(path) as file:
        file.write((json.dumps(asdict(peaks), indent=2) + "\n").encode())
    return peaks


def recheck(device: torch.device, peaks: Peaks,
            beaten: Callable[[Peaks], list[str]]) -> tuple[Peaks, list[str]]:
    """Peaks to compare measured rates with. `beaten(peaks)` names the rates that beat
    `peaks`; if any do, the peaks are measured again (and cached) once. Returns the peaks
    and what still beats them: if anything, the peaks are unreliable (unreliable_line)."""
    if not beaten(peaks):
        return peaks, []
    peaks = measure_peaks(device, refresh=True)
    return peaks, beaten(peaks)


def unreliable_line(beaten: list[str], named: int = 3) -> str:
    """The one line shown instead of figures that beat peaks measured twice; it names the
    first `named` of them."""
    listed = "; ".join(beaten[:named]) + (f"; {len(beaten) - named} more" if len(beaten) > named
                                          else "")
    return ("the measured peaks are unreliable: even measured again, they are beaten ("
            f"{listed}), so figures against them are not shown")


def _matmul_tflops(device: torch.device, dtype: torch.dtype) -> float:
    best = 0.0
    for n in MATMUL_SIZES[device.type]:
        a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
        ms = best_ms(functools.partial(torch.mm, a, b), device, PEAK_REPEATS,
                     PEAK_BUDGET_MS[device.type])
        best = max(best, 2 * n**3 / (ms * 1e-3) / 1e12)
        if ms >= MATMUL_LONG_MS[device.type]:
            break
    return best


def _copy_gbps(device: torch.device) -> float:
    source = torch.ones(COPY_ELEMENTS[device.type], device=device)
    target = torch.empty_like(source)
    ms = best_ms(lambda: target.copy_(source), device, PEAK_REPEATS, PEAK_BUDGET_MS[device.type])
    return 2 * source.numel() * source.element_size() / (ms * 1e-3) / 1e9


def _graph_launch_seconds(device: torch.device) -> float:
    """Seconds per replay of a graph holding one one-element kernel, replayed back to back:
    the host's launch cost, which a graphed iteration pays once."""
    x = torch.zeros(1, device=device)
    side = torch.cuda.Stream(device)
    with torch.cuda.stream(side):  # warm up off the default stream, as capture wants
        x.add_(1)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        x.add_(1)
    times = []
    for _ in range(6):  # the first batch is warm-up
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(GRAPH_REPLAYS):
            graph.replay()
        torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) / GRAPH_REPLAYS)
    return min(times[1:])


# ---------------------------------------------------------------------------------------
# The floor


@dataclass(frozen=True)
class Floor:
    compute_s: float
    memory_s: float
    launch_s: float
    floor_s: float
    bound: str  # "compute", "memory" or "launch": the largest term


def floor(flops: float, nbytes: float, peaks: Peaks, dtype: str | None = None,
          launches: int = 1) -> Floor:
    """The least time an iteration of `flops` FLOPs and `nbytes` bytes can take on a device
    with `peaks`: compute_s = flops at the matmul peak for `dtype` (Peaks.tflops), memory_s =
    bytes at the copy bandwidth, launch_s = `launches` CUDA-graph launches (0 on the CPU).

    floor_s = max(compute_s, memory_s, launch_s): at best the kernels overlap their compute
    with their memory traffic, and the host launches iteration i + 1 while the device runs
    iteration i (the training loop does not wait for the device between steps)."""
    compute_s = flops / (peaks.tflops(dtype) * 1e12)
    memory_s = nbytes / (peaks.copy_gbps * 1e9)
    launch_s = launches * (peaks.graph_launch_s or 0.0)
    terms = {"compute": compute_s, "memory": memory_s, "launch": launch_s}
    bound = max(terms, key=terms.get)
    return Floor(compute_s, memory_s, launch_s, terms[bound], bound)
