"""Timing helpers shared by the benchmarks and the lessons: medians, never single runs."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_seconds(run: Callable[[], object], repeat: int) -> float:
    """One untimed call (compiling, warming caches), then the median wall time of `repeat`."""
    run()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def gpu_median_ms(run: Callable[[], object], repeat: int = 20, warmup: int = 3) -> float:
    """The median GPU time of `run` in milliseconds, by CUDA events around each call (cupy)."""
    import cupy

    for _ in range(warmup):
        run()
    cupy.cuda.Device().synchronize()
    times = []
    for _ in range(repeat):
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end))
    return statistics.median(times)
