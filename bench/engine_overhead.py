"""Engine overhead: `b2cal caf run` against a bare multiprocessing script (bare_caf.py).

Both run the four reference calibrations on the same toy files with two worker processes,
calling the same collector and algorithm code, each as a fresh process (imports included). The
ratio b2cal / bare is what the engine's job folders, checks, resume bookkeeping, output
databases, provenance, logs and progress cost. The data set is sized so that the bare script
takes at least a minute (fixed costs then weigh what they weigh in real use).

Then the engine's fixed costs, from the records of the last run:
* start to first collector job: from launching the command to the first job starting;
* per-iteration overhead: ModuleAlignment alone on small data, from the last collector job of
  its first iteration to the first job of its second, minus the merge and algorithm time;
* per-job overhead: collecting many tiny files, one per job, compared with reading and
  processing the same files in a plain loop.

Usage: python bench/engine_overhead.py [RUNS FILES_PER_RUN EVENTS_PER_FILE [REPEATS]]
(default 72 10 90000 3: 65M events per stream, about 7 GB, a few minutes to generate; with
B2CAL_BENCH_DATA=DIR the data is generated there once and kept for the next run).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uproot
from common import EXP, interleaved, sized_storage
from rich.console import Console
from rich.table import Table

from b2cal.backends.local import LocalBackend
from b2cal.caf.calibration import RunContext
from b2cal.caf.chain import PayloadChain
from b2cal.caf.driver import run_calibrations
from b2cal.caf.plan import CalibrationRequest
from b2cal.caf.registry import load
from b2cal.caf.steps import collect, plan
from b2cal.caf.workspace import Workspace
from b2cal.toy.generate import generate_toy

HERE = Path(__file__).parent
B2CAL = Path(sys.executable).parent / "b2cal"
CALIBRATIONS = "ChannelT0,ChannelGain,ModuleAlignment,BeamSpot"
#: Tiny files for the per-job overhead: one file of this many events per job.
TINY_FILES, TINY_EVENTS = 200, 20


def job_times(workspace: Workspace, calibration: str, iteration: int) -> list[tuple[float, float]]:
    """(start, end) of every collector job of an iteration, as UNIX times, from their status."""
    times = []
    for job in workspace.calibration(calibration).iteration(iteration).jobs():
        status = job.status()
        assert status is not None and status.state == "done"
        end = status.finished.timestamp()
        times.append((end - status.seconds, end))
    return times


def first_job_delay(output: Path, launched: float) -> float:
    """Seconds from launching ``caf run`` to its first collector job starting."""
    workspace = Workspace(output)
    first = min(
        start
        for name in workspace.run_record().calibrations
        for start, _ in job_times(workspace, name, 0)
    )
    return first - launched


def per_iteration_overhead(folder: Path) -> float:
    """ModuleAlignment alone on small data: from the last collector job of its first iteration
    to the first job of its second, minus the merge and algorithm time recorded in between
    (what the engine spends per iteration on records, payloads, specs and submission)."""
    storage = folder / "small"
    generate_toy(storage, EXP, [1, 2, 3], files_per_run=4, events=3000, seed=5)
    calibration = load("ModuleAlignment")
    workspace = Workspace(folder / "small-output")
    request = CalibrationRequest(exp=EXP, first_run=1, last_run=3, storage=storage)
    with LocalBackend(2) as backend:
        plan(workspace, request, {"ModuleAlignment": calibration})
        run_calibrations(workspace, {"ModuleAlignment": calibration}, backend)
    result = workspace.calibration("ModuleAlignment").iteration(0).result()
    assert result is not None
    last_of_first = max(end for _, end in job_times(workspace, "ModuleAlignment", 0))
    first_of_second = min(start for start, _ in job_times(workspace, "ModuleAlignment", 1))
    return first_of_second - last_of_first - result.merge_seconds - result.algorithm_seconds


def per_job_overhead(folder: Path) -> tuple[float, float]:
    """(engine seconds per tiny job, plain-loop seconds per tiny file), two workers."""
    storage = folder / "tiny"
    generate_toy(storage, EXP, list(range(1, TINY_FILES + 1)), files_per_run=1,
                 events=TINY_EVENTS, seed=5)  # fmt: skip
    calibration = load("ChannelT0").model_copy(update={"max_files_per_job": 1})
    request = CalibrationRequest(exp=EXP, first_run=1, last_run=TINY_FILES, storage=storage)
    workspace = Workspace(folder / "tiny-output")
    made = plan(workspace, request, {"ChannelT0": calibration})
    files = made.calibrations["ChannelT0"].files
    chain = PayloadChain([])

    def loop() -> None:
        for file in files:
            with uproot.open(file.path) as source:
                events = source["events"].arrays(list(calibration.collector.branches))
            calibration.collector.process(events, RunContext(file.exprun, 0, chain.lookup))

    loop()
    start = time.perf_counter()
    loop()
    plain = (time.perf_counter() - start) / len(files)
    with LocalBackend(2) as backend:
        backend.preload(["b2cal.caf.collection:run_job"])
        time.sleep(3)  # workers ready, as after the plan of a real run
        start = time.perf_counter()
        collect(workspace, calibration, 0, backend)
        wall = time.perf_counter() - start
    return wall * 2 / len(files) - plain, plain


def main() -> int:
    runs, files_per_run, events = (
        (int(a) for a in sys.argv[1:4]) if len(sys.argv) > 3 else (72, 10, 90_000)
    )
    repeats = int(sys.argv[4]) if len(sys.argv) > 4 else 3
    folder = Path(tempfile.mkdtemp(prefix="b2cal-bench-"))
    console = Console(width=140)
    storage = sized_storage(folder, runs, files_per_run, events, console.print)
    outputs = iter(range(1000))
    launched: list[tuple[Path, float]] = []

    def engine() -> None:
        output = folder / f"out{next(outputs)}"
        command = [
            str(B2CAL), "caf", "run", "--storage", str(storage), "--exp", str(EXP),
            "--runs", f"1-{runs}", "--calibrations", CALIBRATIONS, "--output", str(output),
            "--workers", "2",
        ]  # fmt: skip
        launched.append((output, time.time()))
        subprocess.run(command, check=True, capture_output=True)

    def bare() -> None:
        command = [sys.executable, str(HERE / "bare_caf.py"), str(storage), str(EXP)]
        subprocess.run([*command, "1", str(runs)], check=True, capture_output=True)

    bare()  # warm the page cache
    times = interleaved(repeats, {"bare": bare, "b2cal": engine})
    first_job = first_job_delay(*launched[-1])
    per_iteration = per_iteration_overhead(folder)
    per_job, plain = per_job_overhead(folder)

    table = Table(title="engine overhead: b2cal caf run / bare multiprocessing script (2 workers)")
    for column in ("events per stream", "files", "bare script (s)", "b2cal caf run (s)", "ratio"):
        table.add_column(column, justify="right")
    table.add_row(
        str(runs * files_per_run * events),
        str(2 * runs * files_per_run),
        f"{times['bare']:.1f}",
        f"{times['b2cal']:.1f}",
        f"{times['b2cal'] / times['bare']:.3f}",
    )
    console.print(table)
    if times["bare"] < 60:
        console.print("[yellow]the bare script took less than 60 s: use a larger data set")
    costs = Table(title="fixed costs of the engine (from job and iteration records)")
    for column in ("cost", "value"):
        costs.add_column(column)
    costs.add_row("start to first collector job", f"{first_job:.2f} s")
    costs.add_row(
        "per-iteration overhead (ModuleAlignment 0 -> 1)", f"{per_iteration * 1e3:.0f} ms"
    )
    costs.add_row(
        f"per-job overhead ({TINY_FILES} jobs of one {TINY_EVENTS}-event file)",
        f"{per_job * 1e3:.1f} ms (a plain loop spends {plain * 1e3:.1f} ms on such a file)",
    )
    console.print(costs)
    console.print(f"medians of {repeats} interleaved runs; spread of one run is a few percent")
    shutil.rmtree(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
