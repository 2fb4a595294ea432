"""time_fn(fn, device): the median milliseconds of one call of fn; best_ms(fn, device): the
fastest, for peaks, which must be what the device can do at best.

CUDA calls are timed with triton.testing.do_bench (CUDA events, L2 flushed between calls).
CPU calls are timed on the wall clock: warm-up calls, then timed calls until the time
budget is spent, with at least MIN_CPU_CALLS of them so that slow cases still get a median.
"""

import math
import statistics
import time
from collections.abc import Callable

import torch

MIN_CPU_CALLS = 5
# best_ms on the CPU: each repeat runs fn often enough to fill REPEAT_FILL_MS, so that the
# clock's resolution and one-off stalls do not decide a short call's time.
REPEAT_FILL_MS = 10.0
WARMUP_CALLS = 2  # the first calls pay one-off costs (oneDNN's JIT, page faults)


def time_fn(fn: Callable[[], object], device: torch.device, repeat_ms: float = 300.0,
            warmup_ms: float = 25.0) -> float:
    """Median milliseconds per call of fn, which runs work on `device`."""
    if device.type == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=warmup_ms, rep=repeat_ms,
                                       return_mode="median")
    _call_for(fn, warmup_ms, min_calls=1)
    return statistics.median(_call_for(fn, repeat_ms, min_calls=MIN_CPU_CALLS))


def time_interleaved(fns: dict[str, Callable[[], object]], device: torch.device,
                     repeat_ms: float = 300.0, rounds: int = 10) -> dict[str, float]:
    """time_fn for several variants, in `rounds` alternating rounds of repeat_ms / rounds each
    (the order reversed every other round); the median per variant over all its rounds. Timed
    one after the other, the variant timed second ran up to 13% slower than interleaved (CPU,
    bench fuse): what changes on the machine over a run is then shared out evenly."""
    times = {name: [] for name in fns}
    names = list(fns)
    for fn in fns.values():
        time_fn(fn, device, repeat_ms=0.0)  # warm-up
    for round_ in range(rounds):
        for name in names if round_ % 2 == 0 else reversed(names):
            times[name].append(time_fn(fns[name], device, repeat_ms / rounds, warmup_ms=0.0))
    return {name: statistics.median(ms) for name, ms in times.items()}


def best_ms(fn: Callable[[], object], device: torch.device, repeats: int = 5,
            budget_ms: float = 0.0) -> float:
    """The fewest milliseconds one call of fn took, over at least `repeats` timed repeats
    (and as many as fit in budget_ms) after a warm-up: on a shared machine other work only
    ever slows a call down, so the more tries, the likelier one runs undisturbed."""
    if device.type == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, rep=max(budget_ms, 1.0), return_mode="min")
    warmup = _call_for(fn, 0.0, min_calls=WARMUP_CALLS)
    calls = max(1, math.ceil(REPEAT_FILL_MS / min(warmup)))
    times = []
    while len(times) < repeats or sum(times) * calls < budget_ms:
        times.append(_repeat_ms(fn, calls))
    return min(times)


def _repeat_ms(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) * 1e3 / calls


def _call_for(fn: Callable[[], object], budget_ms: float, min_calls: int) -> list[float]:
    """Calls fn until budget_ms have passed and it ran min_calls times; each call's ms."""
    times = []
    while len(times) < min_calls or sum(times) < budget_ms:
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return times
