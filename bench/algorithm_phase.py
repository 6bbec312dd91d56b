"""Algorithm phase: executions one after the other in the driver's thread (as before) against
executions in an AlgorithmPool of two processes (b2cal.caf.executions).

The four reference calibrations are collected once on the toy data; then each one's algorithm
step (``run_algorithm`` of its first iteration: merge, strategy, executions, local database) is
timed both ways, in turn (interleaved). ChannelT0 (run-by-run fits) and BeamSpot (run by run)
run their runs side by side in the pool; ChannelGain and ModuleAlignment have one execution each,
so for them the pool costs what sending inputs through the workspace costs.

Then the stall the pool removes: ChannelT0's and ModuleAlignment's algorithm steps started
together in two threads of one driver (as ``caf run`` and a flow run them, their collections
having ended together), beside a third thread that stands for the driver's own work (a flow
run's Prefect client, another calibration's collection): it wakes every 5 ms, and its longest
pause says how long the driver could not act. Reported: that pause, and each step's end.

Usage: python bench/algorithm_phase.py [RUNS FILES_PER_RUN EVENTS_PER_FILE [REPEATS]]
(default 16 2 40000 3: the 16-run toy set; B2CAL_BENCH_DATA=DIR keeps the data).
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from common import EXP, interleaved, sized_storage
from rich.console import Console
from rich.table import Table

from b2cal.backends.local import LocalBackend
from b2cal.caf.calibration import AlgorithmResult, Calibration
from b2cal.caf.executions import AlgorithmPool
from b2cal.caf.plan import CalibrationRequest
from b2cal.caf.registry import load
from b2cal.caf.steps import collect, finish, plan, run_algorithm
from b2cal.caf.workspace import Workspace

NAMES = ("ChannelT0", "ChannelGain", "ModuleAlignment", "BeamSpot")
WORKERS = 2


def prepare(workspace: Workspace, storage: Path, runs: int) -> dict[str, Calibration]:
    """Every calibration collected and run to its end once (dependants need the payloads)."""
    calibrations = {name: load(name) for name in NAMES}
    request = CalibrationRequest(exp=EXP, first_run=1, last_run=runs, storage=storage)
    made = plan(workspace, request, calibrations)
    with LocalBackend(WORKERS) as backend:
        for name in made.order:
            calibration = calibrations[name]
            for iteration in range(calibration.max_iterations):
                collect(workspace, calibration, iteration, backend)
                if run_algorithm(workspace, calibration, iteration).result is not (
                    AlgorithmResult.ITERATE
                ):
                    break
            finish(workspace, calibration)
    return calibrations


def step(
    workspace: Workspace, calibration: Calibration, pool: AlgorithmPool | None
) -> Callable[[], object]:
    """The first iteration's algorithm step, its result forgotten first so it runs again."""

    def again() -> object:
        workspace.calibration(calibration.name).iteration(0).forget_result()
        return run_algorithm(workspace, calibration, 0, pool=pool)

    return again


def side_by_side(
    workspace: Workspace, calibrations: dict[str, Calibration], pool: AlgorithmPool | None
) -> dict[str, float]:
    """ChannelT0 and ModuleAlignment's steps started together: each one's seconds to its end,
    and the longest pause of a thread of the driver that wants to wake every 5 ms."""
    ended: dict[str, float] = {}
    start = time.perf_counter()
    done = threading.Event()
    pauses: list[float] = []

    def heartbeat() -> None:
        last = time.perf_counter()
        while not done.is_set():
            time.sleep(0.005)
            now = time.perf_counter()
            pauses.append(now - last - 0.005)
            last = now

    def one(name: str) -> None:
        step(workspace, calibrations[name], pool)()
        ended[name] = time.perf_counter() - start

    beat = threading.Thread(target=heartbeat)
    beat.start()
    threads = [threading.Thread(target=one, args=(n,)) for n in ("ChannelT0", "ModuleAlignment")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    beat.join()
    return {**ended, "pause": max(pauses)}


def main() -> int:
    runs, files_per_run, events = (
        (int(a) for a in sys.argv[1:4]) if len(sys.argv) > 3 else (16, 2, 40_000)
    )
    repeats = int(sys.argv[4]) if len(sys.argv) > 4 else 3
    folder = Path(tempfile.mkdtemp(prefix="b2cal-bench-"))
    console = Console(width=140)
    storage = sized_storage(folder, runs, files_per_run, events, console.print)
    workspace = Workspace(folder / "out")
    console.print("collecting once")
    calibrations = prepare(workspace, storage, runs)

    table = Table(title=f"algorithm step, {runs} runs: in the driver's thread / in a pool of "
                  f"{WORKERS} processes")  # fmt: skip
    for column in ("calibration", "executions", "serial (s)", "pool (s)", "pool / serial"):
        table.add_column(column, justify="right")
    totals = {"serial": 0.0, "pool": 0.0}
    with AlgorithmPool(WORKERS) as pool:
        for name in NAMES:
            calibration = calibrations[name]
            serial, parallel = (
                step(workspace, calibration, None),
                step(workspace, calibration, pool),
            )
            times = interleaved(repeats, {"serial": serial, "pool": parallel})
            result = workspace.calibration(name).iteration(0).result()
            count = len(result.executions) + len(result.discarded) if result else 0
            totals["serial"] += times["serial"]
            totals["pool"] += times["pool"]
            table.add_row(name, str(count), f"{times['serial']:.2f}", f"{times['pool']:.2f}",
                          f"{times['pool'] / times['serial']:.2f}")  # fmt: skip
        table.add_row("all four", "", f"{totals['serial']:.2f}", f"{totals['pool']:.2f}",
                      f"{totals['pool'] / totals['serial']:.2f}")  # fmt: skip
        console.print(table)

        together: dict[str, list[dict[str, float]]] = {"serial": [], "pool": []}
        for _ in range(repeats):
            together["serial"].append(side_by_side(workspace, calibrations, None))
            together["pool"].append(side_by_side(workspace, calibrations, pool))
    median = {n: statistics_median(together, n) for n in ("ChannelT0", "ModuleAlignment", "pause")}
    stall = Table(title="ChannelT0 and ModuleAlignment's algorithm steps started together")
    for column in ("executions", "driver's longest pause (ms)", "ModuleAlignment ends (s)",
                   "ChannelT0 ends (s)"):  # fmt: skip
        stall.add_column(column, justify="right")
    for mode in ("serial", "pool"):
        label = "driver's threads" if mode == "serial" else f"pool of {WORKERS} processes"
        stall.add_row(label, f"{median['pause'][mode] * 1e3:.0f}",
                      f"{median['ModuleAlignment'][mode]:.2f}",
                      f"{median['ChannelT0'][mode]:.2f}")  # fmt: skip
    console.print(stall)
    console.print(f"medians of {repeats} interleaved runs")
    shutil.rmtree(folder)
    return 0


def statistics_median(together: dict[str, list[dict[str, float]]], name: str) -> dict[str, float]:
    """Calibration ``name``'s median seconds to its end, per mode."""
    return {mode: statistics.median(t[name] for t in runs) for mode, runs in together.items()}


if __name__ == "__main__":
    sys.exit(main())
