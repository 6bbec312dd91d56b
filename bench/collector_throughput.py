"""Collector throughput: b2cal's collection path against a bare loop doing the same work.

For each reference collector, on the same files (at least 500k events), single process:

* **bare read** — ``uproot.open(f)["events"].arrays(branches)`` for every file;
* **bare loop** — the bare read, the same ``process()`` call on every file and a merge per run
  with ``+``: what a careful expert would write by hand;
* **b2cal** — :func:`b2cal.caf.collection.collect_files`: open and check every file (length,
  metadata, branches, entries), read in chunks, ``process()``, merge per run in place.

Printed: seconds (medians of interleaved repeats) and throughput ratios b2cal / bare loop (the
target is >= 0.95) and b2cal / bare read.

Usage: python bench/collector_throughput.py [EVENTS_PER_FILE] [REPEATS]
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Sequence
from functools import partial
from typing import Any

import uproot
from common import EXP, RUNS, interleaved, make_storage
from rich.console import Console
from rich.table import Table

from b2cal.backends.local import LocalBackend
from b2cal.caf.accumulator import Accumulator
from b2cal.caf.calibration import Calibration, RunContext
from b2cal.caf.chain import PayloadChain
from b2cal.caf.collection import collect_files
from b2cal.caf.driver import run_calibrations
from b2cal.caf.graph import with_dependencies
from b2cal.caf.plan import CalibrationRequest
from b2cal.caf.registry import load
from b2cal.caf.steps import plan
from b2cal.caf.workspace import Workspace
from b2cal.catalog.inputs import InputFile
from b2cal.core.iov import ExpRun

NAMES = ["ChannelT0", "ChannelGain", "ModuleAlignment", "BeamSpot"]
FILES_PER_RUN = 5


def bare_read(calibration: Calibration, files: Sequence[InputFile]) -> None:
    branches = list(calibration.collector.branches)
    for file in files:
        with uproot.open(file.path) as source:
            source["events"].arrays(branches)


def bare_loop(calibration: Calibration, files: Sequence[InputFile], chain: PayloadChain) -> Any:
    branches = list(calibration.collector.branches)
    per_run: dict[ExpRun, Accumulator] = {}
    for file in files:
        with uproot.open(file.path) as source:
            events = source["events"].arrays(branches)
        context = RunContext(file.exprun, 0, chain.lookup, calibration.settings)
        part = calibration.collector.process(events, context)
        run = file.exprun
        per_run[run] = per_run[run] + part if run in per_run else part
    return per_run


def main() -> int:
    events = int(sys.argv[1]) if len(sys.argv) > 1 else 17_000
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 9
    storage = make_storage(events=events, files_per_run=FILES_PER_RUN)
    calibrations, _ = with_dependencies(NAMES, load)
    workspace = Workspace(storage.parent / "output")
    request = CalibrationRequest(exp=EXP, first_run=RUNS[0], last_run=RUNS[-1], storage=storage)
    with LocalBackend(2) as backend:  # the payloads that the dependent collectors look up
        made = plan(workspace, request, calibrations)
        run_calibrations(workspace, calibrations, backend)
    chain = PayloadChain([workspace.calibration(name).outputdb for name in NAMES])
    table = Table(title="collector throughput, single process (medians of interleaved repeats)")
    for column in (
        "collector", "files", "events", "bare read (s)", "bare loop (s)", "b2cal (s)",
        "b2cal / bare loop", "b2cal / bare read",
    ):  # fmt: skip
        table.add_column(column, justify="right")
    for name in NAMES:
        calibration = calibrations[name]
        files = made.calibrations[name].files
        _, status = collect_files(calibration.collector, files, chain, 0, calibration.settings)
        times = interleaved(
            repeats,
            {
                "read": partial(bare_read, calibration, files),
                "loop": partial(bare_loop, calibration, files, chain),
                "b2cal": partial(
                    collect_files, calibration.collector, files, chain, 0, calibration.settings
                ),
            },
        )
        table.add_row(
            name,
            str(len(files)),
            str(status.events),
            f"{times['read']:.3f}",
            f"{times['loop']:.3f}",
            f"{times['b2cal']:.3f}",
            f"{times['loop'] / times['b2cal']:.2f}",
            f"{times['read'] / times['b2cal']:.2f}",
        )
    console = Console(width=140)
    console.print(table)
    console.print("throughput ratios: above 1, b2cal is faster (target: b2cal / bare loop >= 0.95)")
    shutil.rmtree(storage.parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
