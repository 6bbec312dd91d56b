"""Crash healing on the local stack, with the default settings: how long a request takes when
something dies half-way, against the same request left alone, in the same run.

Five requests of the same bucket (ChannelT0 and ChannelGain) are timed from creation to DONE:
* uninterrupted (the baseline);
* the flow-run (engine) process killed (SIGKILL) while collector jobs are half done: the run's
  supervisor reports the crash, the site's reconciler retries the run;
* the run's processes *and* its worker killed (a node lost), then ``server up`` as a service
  manager would: the reconciler sees the process gone on its host and retries the run;
* the worker stopped (SIGTERM), and killed (SIGKILL), then started again: the run, detached
  from it, goes on (no retry: the ratio should be about 1).
For each: the ratio to the baseline, and the time from the kill to the request DONE.

Then the reconciler's cost per pass: 1000 RUNNING requests, each with an active calibration
run and a real Prefect flow run (Running, no process of its own), against a pass over 10.

Usage: python bench/healing.py [--passes] [RUNS FILES_PER_RUN EVENTS_PER_FILE]
(default 8 8 20000; --passes: the reconciler's cost alone)
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from common import EXP, STACK_SITE, free_port
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from b2cal.toy.generate import generate_toy

CALIBRATIONS = ("ChannelT0", "ChannelGain")


def main() -> int:
    only_passes = "--passes" in sys.argv  # the reconciler's cost alone
    numbers = [a for a in sys.argv[1:] if a != "--passes"]
    runs, files_per_run, events = (
        (int(a) for a in numbers[:3]) if len(numbers) > 2 else (8, 8, 20_000)
    )
    console = Console(width=130)
    folder = Path(tempfile.mkdtemp(prefix="b2cal-bench-healing-"))
    storage, home = folder / "storage", folder / "home"
    generate_toy(storage, EXP, list(range(1, runs + 1)), files_per_run=files_per_run,
                 events=events, seed=5)  # fmt: skip
    (home / "sites").mkdir(parents=True)
    (home / "sites" / "local.toml").write_text(STACK_SITE.format(storage=storage, home=home))
    os.environ.update(B2CAL_HOME=str(home), B2CAL_SITES_DIR=str(home / "sites"),
                      PREFECT_HOME=str(home / "prefect-user"))  # fmt: skip
    os.environ.pop("PREFECT_API_URL", None)

    from b2cal.caf.workspace import Workspace
    from b2cal.core.processes import alive
    from b2cal.db import discovery
    from b2cal.db.database import StateDatabase
    from b2cal.orchestrator.launcher import running as detached_runs
    from b2cal.orchestrator.stack import LocalStack, StackOptions
    from b2cal.processing.area import RequestArea
    from b2cal.requests.healing import recorded_process
    from b2cal.requests.operations import new_request, start_request
    from b2cal.sites import RequestKind, load_site

    stack = LocalStack()
    options = StackOptions(port=free_port(), sites=("local",), discover=False)
    state = stack.up(options)
    os.environ["PREFECT_API_URL"] = state["api_url"]
    site = load_site("local")
    db = StateDatabase(site.state_database_url)
    discovery.discover(db, site)

    def request(kill: Callable[[int, str], None] | None = None) -> tuple[float, float | None]:
        """Seconds from creation to DONE, and from the kill to DONE."""
        made = new_request(
            db, site, kind=RequestKind.PROMPT, exp=EXP, runs=(1, runs),
            calibrations=CALIBRATIONS, input_tags=[], reference_tag=None, config={},
            open_ended=True, actor="bench",
        )  # fmt: skip
        start = time.monotonic()
        flow_run = start_request(db, made, site)
        killed = None
        if kill is not None:
            jobs = Workspace(site.request_folder(made.id) / "output")
            while sum(1 for j in _jobs(jobs) if j) < 4:
                time.sleep(0.2)
            kill(made.id, flow_run)
            killed = time.monotonic()
        while db.request(made.id).state.value not in ("DONE", "FAILED", "CANCELLED"):
            time.sleep(0.5)
        assert db.request(made.id).state.value == "DONE", db.calibration_runs(made.id)
        end = time.monotonic()
        return end - start, None if killed is None else end - killed

    def kill_process(request_id: int, flow_run: str) -> None:
        record = recorded_process(RequestArea(site.request_folder(request_id)), flow_run)
        assert record is not None, "the flow-run process has not recorded itself"
        os.kill(record.pid, signal.SIGKILL)

    def kill_node(request_id: int, flow_run: str) -> None:
        """The worker, the run's supervisor and its engine: all of the run's host."""
        os.kill(stack.state()["workers"]["local"], signal.SIGKILL)
        supervisor = detached_runs().get(flow_run)
        if supervisor:
            os.kill(supervisor, signal.SIGKILL)
        kill_process(request_id, flow_run)
        time.sleep(1)
        stack.up(options)  # as a service manager restarts the worker

    def stop_worker(sig: signal.Signals) -> Callable[[int, str], None]:
        def stop(request_id: int, flow_run: str) -> None:
            worker = stack.state()["workers"]["local"]
            os.kill(worker, sig)
            while alive(worker):
                time.sleep(0.1)
            stack.up(options)  # as a service manager restarts the worker

        return stop

    results: dict[str, tuple[float, float | None]] = {}
    try:
        with Progress(console=console, transient=True) as progress:
            cases = (("uninterrupted", None), ("flow-run process killed", kill_process),
                     ("process and worker killed", kill_node),
                     ("worker stopped (SIGTERM)", stop_worker(signal.SIGTERM)),
                     ("worker killed (SIGKILL)", stop_worker(signal.SIGKILL)))  # fmt: skip
            task = progress.add_task("requests", total=0 if only_passes else len(cases))
            for name, kill in () if only_passes else cases:
                results[name] = request(kill)
                progress.advance(task)
        passes = reconciler_passes(db, site)
    finally:
        db.close()
        stack.down()
    if results:
        title = f"healing: request created -> DONE ({runs} runs x {files_per_run} files)"
        table = Table(title=title)
        for column in ("case", "request (s)", "ratio to uninterrupted", "kill -> DONE (s)"):
            table.add_column(column, justify="right")
        base = results["uninterrupted"][0]
        for name, (total, heal) in results.items():
            table.add_row(name, f"{total:.1f}", f"{total / base:.2f}",
                          "-" if heal is None else f"{heal:.1f}")  # fmt: skip
        console.print(table)
    costs = Table(title="the reconciler's pass (b2cal's records, one Prefect read, decisions)")
    for column in ("active flow runs", "pass (s)", "ratio to 10"):
        costs.add_column(column, justify="right")
    for count, seconds in passes.items():
        costs.add_row(str(count), f"{seconds:.3f}", f"{seconds / passes[10]:.1f}")
    console.print(costs)
    shutil.rmtree(folder)
    return 0


def _jobs(workspace: object) -> list[bool]:
    """Whether each collector job of ChannelT0's first iteration is done."""
    from b2cal.caf.workspace import Workspace

    assert isinstance(workspace, Workspace)
    area = workspace.calibration("ChannelT0")
    if not area.root.is_dir():
        return []
    return [(s := j.status()) is not None and s.state == "done" for j in area.iteration(0).jobs()]


def reconciler_passes(db: object, site: object) -> dict[int, float]:
    """Median seconds of a reconciler pass over 10 and over 1000 active flow runs."""
    from prefect.client.orchestration import get_client
    from prefect.states import Running

    from b2cal.db.database import StateDatabase
    from b2cal.requests.reconciler import reconcile
    from b2cal.sites import RequestKind, Site

    assert isinstance(db, StateDatabase) and isinstance(site, Site)
    made = 0
    passes = {}
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("process-request/local")
        for count in (10, 1000):
            while made < count:
                run = client.create_flow_run_from_deployment(
                    deployment.id, parameters={"request_id": 0}, state=Running()
                )
                request = db.create_request(
                    kind=RequestKind.PROMPT, site="local", exp=99, run_low=1, run_high=2,
                    calibrations=["ChannelT0"], input_tags=[], actor="bench",
                )  # fmt: skip
                db.start_request(request.id)
                db.set_request_flow_run(request.id, str(run.id))
                made += 1
            times = []
            for _ in range(5):
                start = time.perf_counter()
                assert reconcile(site, db) == []
                times.append(time.perf_counter() - start)
            passes[count] = statistics.median(times)
    return passes


if __name__ == "__main__":
    sys.exit(main())
