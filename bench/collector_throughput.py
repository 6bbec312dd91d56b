"""Collector throughput of each reference collector against a bare uproot read.

For every reference calibration: the time b2cal's collection path takes over the same files
(open and check the file, read the collector's branches in chunks, run the collector, merge per
run) divided by the time of a bare ``uproot.open(f)["events"].arrays(branches)`` of the same
branches. A ratio near 1 means reading dominates; above that is the collector's own work.
"""

from __future__ import annotations

import shutil
import sys

import uproot
from common import EXP, RUNS, best_of, make_storage
from rich.console import Console
from rich.table import Table

from b2cal.backends.local import LocalBackend
from b2cal.caf.calibration import Collector
from b2cal.caf.chain import PayloadChain
from b2cal.caf.collection import collect_files
from b2cal.caf.driver import run_calibrations
from b2cal.caf.graph import with_dependencies
from b2cal.caf.plan import CalibrationRequest
from b2cal.caf.registry import load
from b2cal.caf.steps import plan
from b2cal.caf.workspace import Workspace
from b2cal.catalog.inputs import InputFile

NAMES = ["ChannelT0", "ChannelGain", "ModuleAlignment", "BeamSpot"]


def time_collector(
    collector: Collector, files: list[InputFile], chain: PayloadChain
) -> tuple[float, float, int]:
    """(bare read seconds, b2cal collection seconds, events) over ``files``."""
    branches = list(collector.branches)

    def bare() -> None:
        for file in files:
            with uproot.open(file.path) as source:
                source["events"].arrays(branches)

    bare()  # warm the page cache and the imports before timing either
    base = best_of(5, bare)
    ours = best_of(5, lambda: collect_files(collector, files, chain, 0))
    _, status = collect_files(collector, files, chain, 0)
    return base, ours, status.events


def main() -> int:
    storage = make_storage()
    output = storage.parent / "output"
    calibrations, _ = with_dependencies(NAMES, load)
    request = CalibrationRequest(exp=EXP, first_run=RUNS[0], last_run=RUNS[-1], storage=storage)
    workspace = Workspace(output)
    with LocalBackend(2) as backend:  # payloads the dependent collectors look up
        made = plan(workspace, request, calibrations)
        run_calibrations(workspace, calibrations, backend)
    chain = PayloadChain([workspace.calibration(name).outputdb for name in NAMES])
    table = Table(title="collector throughput (ratio to a bare uproot read of the same branches)")
    for column in ("collector", "files", "events", "bare read [s]", "b2cal collect [s]", "ratio"):
        table.add_column(column, justify="right")
    for name in NAMES:
        collector = calibrations[name].collector
        files = made.calibrations[name].files
        base, ours, events = time_collector(collector, files, chain)
        table.add_row(
            name, str(len(files)), str(events), f"{base:.3f}", f"{ours:.3f}", f"{ours / base:.2f}"
        )
    Console().print(table)
    shutil.rmtree(storage.parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
