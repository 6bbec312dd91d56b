"""Shared set-up of the benchmarks: toy data made fresh for each run, and timing.

Benchmarks print ratios against a baseline measured in the same process and run, never absolute
times alone: the machines here are noisy and shared.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from b2cal.toy.generate import generate_toy

EXP = 1
RUNS = list(range(1, 7))


def make_storage(events: int = 4000, files_per_run: int = 2) -> Path:
    storage = Path(tempfile.mkdtemp(prefix="b2cal-bench-")) / "storage"
    generate_toy(storage, EXP, RUNS, files_per_run=files_per_run, events=events, seed=11)
    return storage


def best_of(repeats: int, action: Callable[[], object]) -> float:
    """Median wall time of ``repeats`` calls (the median resists a noisy neighbour)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
