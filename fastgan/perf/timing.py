"""time_fn(fn, device): the median milliseconds of one call of fn.

CUDA calls are timed with triton.testing.do_bench (CUDA events, L2 flushed between calls).
CPU calls are timed on the wall clock: warm-up calls, then timed calls until the time
budget is spent, with at least MIN_CPU_CALLS of them so that slow cases still get a median.
"""

import statistics
import time
from collections.abc import Callable

import torch

MIN_CPU_CALLS = 5


def time_fn(fn: Callable[[], object], device: torch.device, repeat_ms: float = 300.0,
            warmup_ms: float = 25.0) -> float:
    """Median milliseconds per call of fn, which runs work on `device`."""
    if device.type == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=warmup_ms, rep=repeat_ms,
                                       return_mode="median")
    _call_for(fn, warmup_ms, min_calls=1)
    return statistics.median(_call_for(fn, repeat_ms, min_calls=MIN_CPU_CALLS))


def _call_for(fn: Callable[[], object], budget_ms: float, min_calls: int) -> list[float]:
    """Calls fn until budget_ms have passed and it ran min_calls times; each call's ms."""
    times = []
    while len(times) < min_calls or sum(times) < budget_ms:
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return times
