"""Shared set-up of the benchmarks: toy data made fresh for each run, timing, a results table.

Benchmarks print ratios against a baseline measured in the same process and run, never absolute
times alone: the machines here are noisy and shared. Candidates and baselines are timed in
turn (interleaved), so a noisy neighbour slows both alike; the median of the repeats is kept.
"""

from __future__ import annotations

import os
import socket
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from b2cal.toy.generate import generate_toy

EXP = 1
RUNS = list(range(1, 7))

#: The ``local`` site of the benchmarks that run the local stack: files registered at once, one
#: bucket, two workers, sign-off by the site's policy.
STACK_SITE = """
storage_roots = ["{storage}"]
work_root = "{home}/work"
settle_seconds = 0
[buckets]
runs = 100000
[backend]
workers = 2
[signoff]
default = "auto"
"""


def stack_home(folder: Path, storage: Path) -> Path:
    """A b2cal home in ``folder`` whose ``local`` site (:data:`STACK_SITE`) reads ``storage``,
    made this process's (and its children's) home, Prefect's user profiles kept in it."""
    home = folder / "home"
    sites = home / "sites"
    sites.mkdir(parents=True)
    (sites / "local.toml").write_text(STACK_SITE.format(storage=storage, home=home))
    os.environ.update(
        B2CAL_HOME=str(home), B2CAL_SITES_DIR=str(sites), PREFECT_HOME=str(home / "prefect-user")
    )
    os.environ.pop("PREFECT_API_URL", None)
    return home


def free_port() -> int:
    """A free TCP port on 127.0.0.1, for the stack's Prefect server."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def make_storage(events: int = 4000, files_per_run: int = 2, runs: list[int] = RUNS) -> Path:
    """Toy data of both streams in a fresh temporary folder (the caller removes its parent)."""
    storage = Path(tempfile.mkdtemp(prefix="b2cal-bench-")) / "storage"
    generate_toy(storage, EXP, runs, files_per_run=files_per_run, events=events, seed=11)
    return storage


def sized_storage(
    folder: Path, runs: int, files_per_run: int, events: int, say: Callable[[str], object]
) -> Path:
    """The toy data of a benchmark's size: generated in ``folder``, or, with
    ``B2CAL_BENCH_DATA=DIR``, once in DIR and kept there for the next run."""
    kept = os.environ.get("B2CAL_BENCH_DATA")
    storage = Path(kept) / f"r{runs}-f{files_per_run}-e{events}" if kept else folder / "storage"
    if not (storage / "truth.json").is_file():
        say(f"generating {runs} runs x {files_per_run} files x {events} events")
        generate_toy(storage, EXP, list(range(1, runs + 1)), files_per_run=files_per_run,
                     events=events, seed=11)  # fmt: skip
    return storage


def interleaved(repeats: int, actions: Mapping[str, Callable[[], object]]) -> dict[str, float]:
    """Median wall time of each action, the actions timed in turn ``repeats`` times."""
    times: dict[str, list[float]] = {name: [] for name in actions}
    for _ in range(repeats):
        for name, action in actions.items():
            start = time.perf_counter()
            action()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}
