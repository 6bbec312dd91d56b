"""A prompt request end to end through Prefect against the bare multiprocessing script.

Both run the four reference calibrations on the same toy bucket with two worker processes: the
bare script (bare_caf.py) as one process, b2cal as a request on the local stack (Prefect server,
process worker, the deployments): created, planned, run by ``process-request`` with its
``calibrate`` subflows, validated, approved by the site's policy and uploaded into its staging
tag. The ratio b2cal / bare is what orchestration costs on top of the computation.

From the records of the last request it also reports:
* start latency: request created -> first collector job submitted to the backend;
* stage gaps: last collector job of an iteration done -> its algorithm started, and a
  dependency's ``outputdb`` written -> the dependant's first collector job submitted (when it
  starts also depends on free workers: calibrations of a request share the site's);
* Prefect API writes per calibration: its flow run, its task runs and their state changes
  (read back from the API: what the orchestration wrote, reads not counted).

Usage: python bench/prompt_request.py [RUNS FILES_PER_RUN EVENTS_PER_FILE [REPEATS]]
(default 72 10 90000 2: the engine-overhead data set; the issue asks for a bucket where the bare
script takes at least 5 minutes: about 5x more events, e.g. 72 10 450000, ~35 GB).
B2CAL_BENCH_DATA=DIR keeps the data for the next run; B2CAL_PREFECT_DATABASE_URL puts the
Prefect server on PostgreSQL.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from common import EXP, free_port, interleaved, sized_storage, stack_home
from rich.console import Console
from rich.table import Table

from b2cal.caf.workspace import Workspace

HERE = Path(__file__).parent
CALIBRATIONS = ("ChannelT0", "ChannelGain", "ModuleAlignment", "BeamSpot")
DEPENDENCIES = {"ChannelGain": "ChannelT0", "BeamSpot": "ModuleAlignment"}


def job_times(workspace: Workspace, calibration: str) -> list[list[tuple[float, float]]]:
    """(start, end) of every collector job, per iteration, as UNIX times."""
    iterations = []
    for area in workspace.calibration(calibration).iterations():
        times = []
        for job in area.jobs():
            status = job.status()
            if status is not None and status.state == "done":
                end = status.finished.timestamp()
                times.append((end - status.seconds, end))
        if times:
            iterations.append(times)
    return iterations


def first_submitted(workspace: Workspace, calibration: str) -> float:
    """When the first collector job of the calibration was handed to the backend (its start
    may wait for a free worker: other calibrations' jobs share the site's workers)."""
    jobs = workspace.calibration(calibration).iteration(0).jobs()
    times = [s.submitted.timestamp() for job in jobs if (s := job.submission()) is not None]
    return min(times)


def stage_gaps(workspace: Workspace) -> tuple[list[float], list[float]]:
    """(last job -> algorithm start, per iteration), (dependency outputdb -> first job
    submitted)."""
    algorithm, dependant = [], []
    for name in CALIBRATIONS:
        area = workspace.calibration(name)
        for index, jobs in enumerate(job_times(workspace, name)):
            result_file = area.iteration(index).root / "result.json"
            result = area.iteration(index).result()
            if result is None or not result_file.is_file():
                continue
            started = result_file.stat().st_mtime - result.merge_seconds - result.algorithm_seconds
            algorithm.append(started - max(end for _, end in jobs))
        if name in DEPENDENCIES:
            written = workspace.calibration(DEPENDENCIES[name]).outputdb / "database.txt"
            dependant.append(first_submitted(workspace, name) - written.stat().st_mtime)
    return algorithm, dependant


def api_writes(request_id: int) -> dict[str, int]:
    """Flow runs, task runs and state changes each calibration's flow run wrote."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterTags,
        TaskRunFilter,
        TaskRunFilterFlowRunId,
    )

    counts = {}
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"request:{request_id}"]))
        )
        for run in runs:
            name = next((t.split(":", 1)[1] for t in run.tags if t.startswith("calib:")), None)
            if name is None:
                continue
            tasks = client.read_task_runs(
                task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[run.id]))
            )
            writes = 1 + len(client.read_flow_run_states(run.id))
            for task in tasks:
                writes += 1 + len(client.read_task_run_states(task.id))
            counts[name] = writes
    return counts


def main() -> int:
    runs, files_per_run, events = (
        (int(a) for a in sys.argv[1:4]) if len(sys.argv) > 3 else (72, 10, 90_000)
    )
    repeats = int(sys.argv[4]) if len(sys.argv) > 4 else 2
    console = Console(width=140)
    folder = Path(tempfile.mkdtemp(prefix="b2cal-bench-prompt-"))
    storage = sized_storage(folder, runs, files_per_run, events, console.print)
    stack_home(folder, storage)

    from b2cal.db import discovery
    from b2cal.db.database import StateDatabase
    from b2cal.orchestrator.stack import LocalStack, StackOptions
    from b2cal.requests.operations import new_request, start_request
    from b2cal.sites import RequestKind, load_site

    stack = LocalStack()
    state = stack.up(StackOptions(port=free_port(), sites=("local",), discover=False))
    os.environ["PREFECT_API_URL"] = state["api_url"]
    site = load_site("local")
    db = StateDatabase(site.state_database_url)
    discovery.discover(db, site)
    created: list[tuple[int, float]] = []

    def prefect() -> None:
        request = new_request(
            db, site, kind=RequestKind.PROMPT, exp=EXP, runs=(1, runs),
            calibrations=CALIBRATIONS, input_tags=[], reference_tag=None, config={},
            open_ended=True, actor="bench",
        )  # fmt: skip
        created.append((request.id, time.time()))
        start_request(db, request, site)
        while db.request(request.id).state.value not in ("DONE", "FAILED", "CANCELLED"):
            time.sleep(0.5)
        assert db.request(request.id).state.value == "DONE", db.calibration_runs(request.id)

    def bare() -> None:
        command = [sys.executable, str(HERE / "bare_caf.py"), str(storage), str(EXP)]
        subprocess.run([*command, "1", str(runs)], check=True, capture_output=True)

    try:
        bare()  # warm the page cache
        times = interleaved(repeats, {"bare": bare, "prefect": prefect})
        request_id, started = created[-1]
        workspace = Workspace(site.request_folder(request_id) / "output")
        first_job = min(first_submitted(workspace, name) for name in CALIBRATIONS)
        algorithm, dependant = stage_gaps(workspace)
        writes = api_writes(request_id)
    finally:
        db.close()
        stack.down()
    table = Table(title="prompt request through Prefect / bare multiprocessing script (2 workers)")
    for column in ("events per stream", "files", "bare script (s)", "Prefect request (s)", "ratio"):
        table.add_column(column, justify="right")
    table.add_row(
        str(runs * files_per_run * events), str(2 * runs * files_per_run),
        f"{times['bare']:.1f}", f"{times['prefect']:.1f}",
        f"{times['prefect'] / times['bare']:.3f}",
    )  # fmt: skip
    console.print(table)
    costs = Table(
        title=f"orchestration costs (request {request_id}, Prefect server: "
        f"{'PostgreSQL' if os.environ.get('B2CAL_PREFECT_DATABASE_URL') else 'SQLite'})"
    )
    for column in ("cost", "value"):
        costs.add_column(column)
    costs.add_row(
        "request created -> first collector job submitted", f"{first_job - started:.2f} s"
    )
    costs.add_row(
        "last collector job -> algorithm start",
        f"median {statistics.median(algorithm):.2f} s, max {max(algorithm):.2f} s",
    )
    costs.add_row(
        "dependency outputdb -> dependant's first job submitted",
        ", ".join(f"{g:.2f} s" for g in dependant)
        + f" (median {statistics.median(dependant):.2f} s)",
    )
    costs.add_row(
        "Prefect API writes per calibration",
        ", ".join(f"{name} {count}" for name, count in sorted(writes.items())),
    )
    console.print(costs)
    console.print(
        f"medians of {repeats} interleaved runs ({datetime.now():%Y-%m-%d %H:%M}); "
        f"data: {json.dumps({'runs': runs, 'files_per_run': files_per_run, 'events': events})}"
    )
    if times["bare"] < 300:
        console.print(
            "[yellow]the bare script took less than 5 minutes: the issue asks for a "
            "larger bucket (see the usage line)"
        )
    shutil.rmtree(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
