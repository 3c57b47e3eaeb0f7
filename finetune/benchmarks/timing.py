"""Timing shared by both backends' speed tools."""

from __future__ import annotations

import statistics
import time


def matmul_rate(run, size: int, repeats: int) -> dict:
    """Median FLOP rate of `run()` (one [size, size] @ [size, size] product that waits for its result),
    timed `repeats` times after one warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"size": size, "repeats": repeats, "median_s": median, "gflops": 2 * size**3 / median / 1e9}
