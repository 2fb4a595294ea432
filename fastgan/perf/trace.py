"""Where the time of a profiled window went, read from its Chrome trace (torch.profiler's
export_chrome_trace): the trace alone is the input, so the same code reads a CPU trace and a
CUDA one.

Host ops (cpu_op and user_annotation events) are nested by time on each thread; the window is
the profiler's ProfilerStep#N annotations. Each piece of time gets one category:

- on the CPU, each op's self time (its duration less its children's), and the steps' own
  self time, which is Python and framework work between ops;
- on CUDA, each kernel's (and copy's and memset's) duration on the device, attributed through
  the host op that launched it ("External id"), and the device's idle time in the window.

A fastgan op is recognised by name wherever it runs: the C++ eager ops and their autograd
nodes, the registered torch.ops.fastgan.* ops, the Triton kernels, and the native engine's
fastgan_native::* scopes (FASTGAN_OPS).
"""

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

# fastgan's ops by what they compute: the names they show up under in a trace, and (the
# same pattern) the torch.ops.fastgan.* names roofline.count_ops reports.
FASTGAN_OPS = {
    "fused_dense forward": re.compile(
        r"fastgan_cpu::fused_dense$|fastgan_cpu::dense_fwd|fastgan::fused_dense_fwd"
        r"|dense_fwd_kernel|fastgan_native::dense_fwd"),
    "fused_dense backward": re.compile(
        r"FusedDense>|_FusedDenseBackward|fastgan_cpu::dense_bwd|fastgan::fused_dense_bwd"
        r"|dense_d[xw]_kernel|fastgan_native::dense_bwd"),
    "gan_d_loss / gan_g_loss": re.compile(
        r"fastgan_cpu::gan_loss|fastgan::gan_loss_fwd|GanLoss>|gan_loss_kernel"
        r"|fastgan_native::gan_loss"),
    "mse_loss / bce_with_logits": re.compile(
        r"fastgan_cpu::pointwise_loss|fastgan::pointwise_loss_fwd|PointwiseLoss>"
        r"|pointwise_loss_kernel|fastgan_native::mse_loss"),
}
DENSE_OPS = ("fused_dense forward", "fused_dense backward")

GEMMS = "GEMMs (fastgan fused_dense)"
OTHER_GEMMS = "GEMMs (other)"
LOSSES = "fused losses (fastgan)"
OPTIMIZER = "optimizer and EMA"
OTHER = "other ops (pointwise, copies, indexing, autograd)"
HOST = "Python and framework between ops"
IDLE = "device idle (waiting for the host)"

GEMM_NAME = re.compile(r"aten::(mm|addmm|bmm|baddbmm|matmul|linear)$|gemm|cutlass|cublas|xmma",
                       re.IGNORECASE)
OPTIMIZER_NAME = re.compile(
    r"^Optimizer\.|_foreach_lerp|multi_tensor_apply|fastgan_native::adam")
HOST_CATEGORIES = ("cpu_op", "user_annotation")
DEVICE_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")


@dataclass
class Event:
    name: str
    ts: float  # µs
    dur: float
    args: dict
    parent: "Event | None" = None
    children_us: float = 0.0

    @property
    def end(self) -> float:
        return self.ts + self.dur

    def chain(self) -> list[str]:
        """Its name and its ancestors', innermost first."""
        names, event = [], self
        while event is not None:
            names.append(event.name)
            event = event.parent
        return names


@dataclass
class Breakdown:
    """One profiled window. Times in µs, summed over the window's steps."""
    device: str  # "cpu" or "cuda"
    steps: int
    window_us: float  # the steps' wall time (CUDA: until the last kernel ends)
    by_category: dict[str, float]  # CPU: host time; CUDA: device time, idle included
    top: list[dict]  # CPU: ops by self time; CUDA: kernels by time. name, calls, us
    fastgan_us: dict[str, float]  # FASTGAN_OPS key -> time
    busy_us: float  # CPU: time inside ops; CUDA: device busy time
    graph_launches: int = 0
    notes: list[str] = field(default_factory=list)


def fastgan_op(name: str) -> str | None:
    return next((key for key, pattern in FASTGAN_OPS.items() if pattern.search(name)), None)


def category(chain: list[str]) -> str:
    """The category of time spent in chain[0], with chain[1:] its ancestors (innermost
    first): the fastgan op it belongs to, else the optimizer's, else its own kind."""
    for name in chain:
        key = fastgan_op(name)
        if key:
            return GEMMS if key in DENSE_OPS else LOSSES
    if any(OPTIMIZER_NAME.search(name) for name in chain):
        return OPTIMIZER
    return OTHER_GEMMS if GEMM_NAME.search(chain[0]) else OTHER


def read_trace(path: Path) -> list[dict]:
    """The complete ("X") events of a Chrome trace file."""
    events = json.loads(Path(path).read_text())
    events = events["traceEvents"] if isinstance(events, dict) else events
    return [e for e in events if e.get("ph") == "X" and "dur" in e]


def _nest(raw: list[dict]) -> list[Event]:
    """Host events as a forest per thread: each gets its parent and its children's time."""
    threads = defaultdict(list)
    for e in raw:
        if e.get("cat") in HOST_CATEGORIES:
            threads[(e.get("pid"), e.get("tid"))].append(e)
    nested = []
    for thread in threads.values():
        stack: list[Event] = []
        for e in sorted(thread, key=lambda e: (e["ts"], -e["dur"])):
            event = Event(e["name"], float(e["ts"]), float(e["dur"]), e.get("args", {}))
            while stack and event.ts >= stack[-1].end:
                stack.pop()
            if stack:
                event.parent = stack[-1]
                stack[-1].children_us += event.dur
            stack.append(event)
            nested.append(event)
    return nested


def _is_step(event: Event) -> bool:
    return event.name.startswith("ProfilerStep#")


def _under_step(event: Event) -> bool:
    return any(name.startswith("ProfilerStep#") for name in event.chain())


def _outermost_fastgan_us(events: list[Event]) -> dict[str, float]:
    """Host time of each fastgan op: the durations of matching events inside no other."""
    times = defaultdict(float)
    for event in events:
        key = fastgan_op(event.name)
        if key and not any(fastgan_op(name) for name in event.chain()[1:]):
            times[key] += event.dur
    return dict(times)


def _top(totals: dict[str, list[float]], limit: int) -> list[dict]:
    rows = [{"name": name, "calls": len(times), "us": sum(times)}
            for name, times in totals.items()]
    return sorted(rows, key=lambda row: -row["us"])[:limit]


def analyze(raw: list[dict], limit: int = 15) -> Breakdown:
    """The window's breakdown from a trace's complete events (read_trace)."""
    host = _nest(raw)
    steps = [e for e in host if _is_step(e)]
    if not steps:
        raise ValueError("the trace has no ProfilerStep#N annotations: it was not recorded "
                         "with torch.profiler's step()")
    device_events = [e for e in raw if e.get("cat") in DEVICE_CATEGORIES]
    if device_events:
        return _analyze_device(raw, host, steps, device_events, limit)
    return _analyze_host(host, steps, limit)


def _analyze_host(host: list[Event], steps: list[Event], limit: int) -> Breakdown:
    window = sum(step.dur for step in steps)
    in_window = [e for e in host if _under_step(e) and not _is_step(e)]
    by_category = defaultdict(float)
    self_times = defaultdict(list)
    for event in in_window:
        self_us = max(0.0, event.dur - event.children_us)
        by_category[category(event.chain())] += self_us
        self_times[event.name].append(self_us)
    by_category[HOST] = sum(max(0.0, s.dur - s.children_us) for s in steps)
    return Breakdown("cpu", len(steps), window, dict(by_category), _top(self_times, limit),
                     _outermost_fastgan_us(in_window), window - by_category[HOST])


def _analyze_device(raw: list[dict], host: list[Event], steps: list[Event],
                    device_events: list[dict], limit: int) -> Breakdown:
    start = min(step.ts for step in steps)
    kernels = [e for e in device_events if e["ts"] >= start]
    end = max([step.end for step in steps] + [e["ts"] + e["dur"] for e in kernels])
    launcher = {e.args["External id"]: e for e in host if e.args.get("External id") is not None}
    by_category, fastgan_us, totals = defaultdict(float), defaultdict(float), defaultdict(list)
    for kernel in kernels:
        op = launcher.get(kernel.get("args", {}).get("External id"))
        chain = [kernel["name"], *(op.chain() if op is not None else [])]
        by_category[category(chain)] += kernel["dur"]
        key = next((k for k in map(fastgan_op, chain) if k), None)
        if key:
            fastgan_us[key] += kernel["dur"]
        totals[kernel["name"]].append(kernel["dur"])
    busy = _union_us([(e["ts"], e["ts"] + e["dur"]) for e in kernels])
    by_category[IDLE] = max(0.0, (end - start) - busy)
    graph_launches = sum(1 for e in raw if e.get("cat") == "cuda_runtime" and e["ts"] >= start
                         and e["name"].startswith("cudaGraphLaunch"))
    return Breakdown("cuda", len(steps), end - start, dict(by_category), _top(totals, limit),
                     dict(fastgan_us), busy, graph_launches)


def _union_us(intervals: list[tuple[float, float]]) -> float:
    """Total length covered by the intervals (kernels on several streams may overlap)."""
    total, reach = 0.0, float("-inf")
    for begin, finish in sorted(intervals):
        if finish > reach:
            total += finish - max(begin, reach)
            reach = finish
    return total
