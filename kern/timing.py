"""Timing helpers shared by the benchmarks and the lessons: medians, never single runs."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path


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


def cpu_name() -> str:
    """The host's CPU model, which every reported figure must name (AVX2 and AVX-512 hosts
    differ by up to 2x)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


BUSY_LOAD = 0.75  # a quiet machine's load average, this process aside, is near 0


def busy_warning(load: float | None = None) -> str | None:
    """A line for a benchmark's output where other work shares the cores (the 1-minute load
    average, or `load`): its figures, and any limit measured beside them, may then be off by
    a factor. None on a quiet machine."""
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:
            return None
    if load <= BUSY_LOAD:
        return None
    return (
        f"# warning: load average {load:.2f} before this run: other work shares the cores, so these "
        "figures (and the host's limit) may be off by a factor; rerun on a quiet machine, --rounds 3"
    )
