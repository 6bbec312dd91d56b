"""The prompt-calibration loop through real Prefect: a server on loopback, real process workers,
the deployments of prefect.yaml, started by b2cal's own local stack (tests/prefect_stack.py).

One stack serves every test of this module (its start and the deployments cost ~25 s), with
the Prefect server on PostgreSQL as a site runs it: on SQLite, Prefect answers concurrent
writes with 503 and its client waits seconds before trying again, which would make timing
checks such as "independent calibrations overlap" depend on luck (the SQLite default is
covered by tests/test_local_stack.py). Each test uses its own experiment's data, so the tests
do not depend on each other's order.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cli import B2CAL, assert_one_line_error
from prefect_stack import (
    Receiver,
    environment,
    free_port,
    processes_with,
    stack_environment,
    webhook_receiver,
)
from sql_databases import database_url
from sqlalchemy import create_engine, text

from b2cal.db.database import StateDatabase
from b2cal.db.states import CalRunState, RequestState
from b2cal.orchestration.stack import LocalStack, StackOptions
from b2cal.toy.generate import generate_toy

pytestmark = pytest.mark.slow

T = TypeVar("T")
PREFECT = Path(sys.executable).with_name("prefect")
S = CalRunState
CALIBRATION_NAMES = ("ChannelT0", "ChannelGain", "ModuleAlignment", "BeamSpot")


@dataclass
class Stack:
    home: Path
    env: dict[str, str]
    api_url: str
    receiver: Receiver
    local: LocalStack
    toy: Path
    options: StackOptions

    def b2cal(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(B2CAL), *map(str, args)],
            capture_output=True,
            text=True,
            env=self.process_env(),
            timeout=300,
        )

    def prefect(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(PREFECT), *args],
            capture_output=True,
            text=True,
            env=self.process_env(),
            timeout=300,
        )

    def process_env(self) -> dict[str, str]:
        env = dict(os.environ, **self.env, PREFECT_API_URL=self.api_url)
        env.pop("PREFECT_PROFILE", None)
        return env

    def db(self) -> StateDatabase:
        return StateDatabase(f"sqlite:///{self.home / 'state.sqlite'}")

    def copy_toy(self, exp: int, site: str) -> None:
        source = self.toy / str(exp) / f"e{exp:04d}"
        shutil.copytree(source, self.home / f"storage-{site}" / f"e{exp:04d}")

    def workspace(self, site: str, request: int) -> Path:
        return self.home / f"work-{site}" / "requests" / str(request)


def prefect_server_url(url: str) -> str:
    """The Prefect server's URL of a test database (its asyncpg driver; pg_trgm it needs)."""
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
    engine.dispose()
    return url.replace("postgresql+psycopg://", "postgresql+asyncpg://")


def wait_until(check: Callable[[], T | None], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("stack")
    toy = home / "toy"
    # exp 1: the demo's data set (closure); exp 2-5: one slow calibration each
    generate_toy(
        toy / "1", 1, range(1, 9), t0_jumps=[5], beamspot_changes=[4], low_stat={6: 60}, seed=2026
    )
    generate_toy(toy / "2", 2, range(1, 5), seed=2)
    for exp in (3, 4, 5):
        generate_toy(toy / str(exp), exp, range(1, 5), files_per_run=6, events=200, seed=exp)
    env = stack_environment(home)
    with (
        database_url("postgresql", home) as prefect_db,
        webhook_receiver() as receiver,
        environment(
            {**env, "B2CAL_PREFECT_DATABASE_URL": prefect_server_url(prefect_db)},
            drop=("PREFECT_API_URL", "PREFECT_PROFILE"),
        ),
    ):
        local = LocalStack()
        options = StackOptions(
            port=free_port(),
            sites=("local", "bnl"),
            discover=False,
            worker_poll_seconds=1,
            notify_url=receiver.url,
            heartbeat_timeout=45,
        )
        try:
            state = local.up(options)
            yield Stack(home, env, state["api_url"], receiver, local, toy, options)
        finally:
            local.down()


@pytest.fixture(autouse=True)
def _stack_environment(stack: Stack) -> Iterator[None]:
    """The stack's environment in this process too (the state database, the Prefect client)."""
    with environment({**stack.env, "PREFECT_API_URL": stack.api_url}, drop=("PREFECT_PROFILE",)):
        yield


def flow_runs(tag: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    with get_client(sync_client=True) as client:
        return list(
            client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag])))
        )


def request_state(stack: Stack, request_id: int) -> RequestState:
    with stack.db() as db:
        return db.request(request_id).state


def calruns(stack: Stack, request_id: int) -> dict[str, Any]:
    with stack.db() as db:
        return {c.calibration: c for c in db.calibration_runs(request_id)}


def created_request(result: subprocess.CompletedProcess[str]) -> int:
    assert result.returncode == 0, result.stdout + result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("created request"))
    return int(line.split()[2])


def test_a_prompt_request_runs_through_the_deployments_and_closes(stack: Stack) -> None:
    stack.copy_toy(1, "local")
    found = stack.b2cal("discover", "--site", "local")
    assert "closed e1 bucket 1: runs 1-8" in found.stdout, found.stdout + found.stderr
    request = created_request(
        stack.b2cal(
            "request", "create", "--site", "local", "--exp", "1", "--bucket", "1", "--no-start"
        )
    )
    started = time.monotonic()
    run = stack.prefect(
        "deployment",
        "run",
        "process-request/local",
        "--param",
        f"request_id={request}",
        "--param",
        "site=local",
        "--watch",
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert request_state(stack, request) is RequestState.DONE
    states = {name: c.state for name, c in calruns(stack, request).items()}
    assert states == dict.fromkeys(
        ["ChannelT0", "ChannelGain", "ModuleAlignment", "BeamSpot"], S.UPLOADED
    )
    shown = stack.b2cal("cdb", "show", f"staging-prompt-{request}")
    assert f"staging-prompt-{request} (TESTING)" in shown.stdout, shown.stdout
    workspace = stack.workspace("local", request)
    closure = stack.b2cal(
        "toy",
        "closure",
        "--output",
        workspace / "output",
        "--truth",
        stack.toy / "1" / "truth.json",
    )
    assert closure.returncode == 0, closure.stdout + closure.stderr
    assert closure.stdout.count("PASS") == 4, closure.stdout
    # names and tags that make the Prefect UI readable
    runs = {r.name: r for r in flow_runs(f"request:{request}")}
    assert "ChannelT0 · e1 bucket 1" in runs, sorted(runs)
    assert {"calib:ChannelT0", "exp:1", "bucket:1", "site:local", "kind:prompt"} <= set(
        runs["ChannelT0 · e1 bucket 1"].tags
    )
    # validation artifacts: a report and plots beside the outputs
    assert (workspace / "validation" / "ChannelT0" / "validation.md").is_file()
    assert list((workspace / "validation" / "ChannelT0").glob("*.png"))
    # dependency order and overlap, from the files the engine wrote
    out = workspace / "output"

    def first_job(name: str) -> float:
        return min(p.stat().st_mtime for p in (out / name).glob("iterations/0/jobs/*/spec.json"))

    def outputdb(name: str) -> float:
        return (out / name / "outputdb" / "database.txt").stat().st_mtime

    assert first_job("ChannelGain") >= outputdb("ChannelT0")
    assert first_job("BeamSpot") >= outputdb("ModuleAlignment")
    assert first_job("ModuleAlignment") < outputdb("ChannelT0")  # independent: they overlap
    assert first_job("ChannelT0") < outputdb("ModuleAlignment")
    print(f"prompt request end to end: {time.monotonic() - started:.1f} s")


def test_signoff_holds_nothing_and_uploads_once(stack: Stack) -> None:
    stack.copy_toy(2, "bnl")
    found = stack.b2cal("discover", "--site", "bnl", "--start")
    assert "started request" in found.stdout, found.stdout + found.stderr
    request = int(found.stdout.split("started request ")[1].split()[0])
    wait_until(
        lambda: request_state(stack, request) is RequestState.WAITING, 180, "sign-offs awaited"
    )
    runs = calruns(stack, request)
    assert {c.state for c in runs.values()} == {S.AWAITING_SIGNOFF}, runs
    # waiting holds no process: every flow run of the request ends
    wait_until(
        lambda: all(r.state.is_final() for r in flow_runs(f"request:{request}")),
        30,
        "the request's flow runs to end while it waits",
    )
    notice = stack.receiver.wait_for(lambda d: d.get("kind") == "awaiting-signoff")
    assert notice["details"]["command"].startswith("b2cal signoff ")

    def signoff(name: str, decision: str) -> subprocess.CompletedProcess[str]:
        return stack.b2cal(
            "signoff", str(runs[name].id), decision, "--site", "bnl", "--comment", "checked"
        )

    approved = signoff("ChannelT0", "approve")
    assert approved.returncode == 0 and "upload started" in approved.stdout, approved.stderr
    wait_until(lambda: calruns(stack, request)["ChannelT0"].state is S.UPLOADED, 120, "upload")
    assert_one_line_error(signoff("ChannelT0", "approve"), "is UPLOADED", "chose approve")
    assert signoff("ModuleAlignment", "reject").returncode == 0
    assert signoff("BeamSpot", "approve").returncode == 0  # blocked: its dependency is rejected
    assert signoff("ChannelGain", "approve").returncode == 0
    wait_until(lambda: calruns(stack, request)["ChannelGain"].state is S.UPLOADED, 120, "upload")
    time.sleep(3)  # the BeamSpot sign-off run has had its chance
    final = calruns(stack, request)
    assert (final["ModuleAlignment"].state, final["BeamSpot"].state) == (S.REJECTED, S.APPROVED)
    shown = stack.b2cal("cdb", "show", f"staging-prompt-{request}", "--json")
    names = {entry["name"] for entry in json.loads(shown.stdout)["iovs"]}
    assert names == {"ChannelT0", "ChannelGain"}, shown.stdout
    with stack.db() as db:
        actions = [
            (a.action, a.outcome)
            for a in db.actions(target=f"calibration run {runs['ChannelT0'].id}")
        ]
    assert actions.count(("signoff approve", "ok")) == 1
    assert ("signoff approve", "refused") in actions
    assert actions.count(("upload", "ok")) == 1
    # the rejected calibration is computed again, with its dependant; both need new sign-offs
    rerun = stack.b2cal("request", "rerun", str(runs["ModuleAlignment"].id), "--site", "bnl")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "ModuleAlignment (attempt 2), BeamSpot (attempt 2)" in rerun.stdout
    wait_until(
        lambda: request_state(stack, request) is RequestState.WAITING, 180, "the rerun to wait"
    )
    again = calruns(stack, request)
    assert (again["ModuleAlignment"].state, again["BeamSpot"].state) == (
        S.AWAITING_SIGNOFF,
        S.AWAITING_SIGNOFF,
    )
    assert signoff("ModuleAlignment", "approve").returncode == 0
    assert signoff("BeamSpot", "approve").returncode == 0
    wait_until(lambda: request_state(stack, request) is RequestState.DONE, 120, "DONE")
    shown = stack.b2cal("cdb", "show", f"staging-prompt-{request}", "--json")
    doc = json.loads(shown.stdout)
    assert doc["state"] == "TESTING", doc
    assert {entry["name"] for entry in doc["iovs"]} == set(CALIBRATION_NAMES)


# --- crashes, retries, cancellation ---------------------------------------------------------
def flow_run_pids(flow_run_id: str) -> list[int]:
    """Processes running a flow run (the worker puts its id in their environment)."""
    return processes_with(f"PREFECT__FLOW_RUN_ID={flow_run_id}")


def flow_run_state(flow_run_id: str) -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run_id).state
        return state.type.value if state is not None else "NONE"


def retry(stack: Stack, flow_run: str) -> None:
    """``prefect flow-run retry`` of a crashed run, as a user would: not in the very second
    it crashed. (A worker may report the crash a moment after the flow-run process did; a
    retry in between is overwritten by that late report while the worker already runs it, and
    a second retry would then start it twice: a Prefect race, which b2cal's calibration locks
    turn into a refused run rather than a double computation.)"""
    time.sleep(5)
    retried = stack.prefect("flow-run", "retry", flow_run)
    assert retried.returncode == 0, retried.stdout + retried.stderr


def flow_run_message(flow_run_id: str) -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run_id).state
        return (state.message or "") if state is not None else ""


def done_jobs(stack: Stack, site: str, request: int, calibration: str) -> dict[str, int]:
    """Finished collector jobs of iteration 0: job folder -> mtime_ns of its status."""
    jobs = stack.workspace(site, request) / "output" / calibration / "iterations" / "0" / "jobs"
    found = {}
    for status in jobs.glob("*/status.json"):
        if json.loads(status.read_text()).get("state") == "done":
            found[status.parent.name] = status.stat().st_mtime_ns
    return found


def start_slow_request(stack: Stack, exp: int) -> tuple[int, str]:
    stack.copy_toy(exp, "local")
    assert stack.b2cal("discover", "--site", "local").returncode == 0
    request = created_request(
        stack.b2cal(
            "request",
            "create",
            "--site",
            "local",
            "--exp",
            str(exp),
            "--runs",
            "1-4",
            "--calibrations",
            "SlowT0",
        )
    )
    with stack.db() as db:
        flow_run = db.request(request).flow_run_id
    assert flow_run
    return request, flow_run


def outputdb_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def reference_output(stack: Stack, request: int, tmp_path: Path) -> dict[str, bytes]:
    """The same calibration run without Prefect, on the request's own input files."""
    files = stack.workspace("local", request) / "files.json"
    with stack.db() as db:
        exp = db.request(request).exp
    ran = stack.b2cal(
        "caf",
        "run",
        "--files-from",
        files,
        "--exp",
        str(exp),
        "--runs",
        "1-4",
        "--calibrations",
        "SlowT0",
        "--output",
        tmp_path / "reference",
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    return outputdb_bytes(tmp_path / "reference" / "SlowT0" / "outputdb")


def test_a_killed_flow_run_is_crashed_and_its_retry_reuses_finished_work(
    stack: Stack, tmp_path: Path
) -> None:
    request, flow_run = start_slow_request(stack, 3)

    def four_done() -> dict[str, int] | None:
        done = done_jobs(stack, "local", request, "SlowT0")
        return done if len(done) >= 4 else None

    before = wait_until(four_done, 120, "four collector jobs done")
    for pid in flow_run_pids(flow_run):
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: flow_run_state(flow_run) == "CRASHED", 60, "the run to be Crashed")
    retry(stack, flow_run)
    wait_until(lambda: flow_run_state(flow_run) == "COMPLETED", 180, "the retry to complete")
    after = done_jobs(stack, "local", request, "SlowT0")
    assert len(after) == 24
    assert {job: after[job] for job in before} == before  # finished jobs were not run again
    assert calruns(stack, request)["SlowT0"].state is S.UPLOADED
    output = stack.workspace("local", request) / "output" / "SlowT0" / "outputdb"
    assert outputdb_bytes(output) == reference_output(stack, request, tmp_path)


def test_runs_whose_worker_and_process_died_are_crashed_by_the_heartbeat_automation(
    stack: Stack,
) -> None:
    request, flow_run = start_slow_request(stack, 4)
    wait_until(lambda: len(done_jobs(stack, "local", request, "SlowT0")) >= 2, 120, "jobs")
    worker = stack.local.state()["workers"]["local"]
    os.kill(worker, signal.SIGKILL)  # the worker goes; its flow-run process stays, re-parented
    frozen = flow_run_pids(flow_run)
    assert frozen
    for pid in frozen:  # and sends no heartbeat any more, but holds its calibration's lock
        os.kill(pid, signal.SIGSTOP)
    try:
        wait_until(lambda: flow_run_state(flow_run) == "CRASHED", 150, "the automation")
        stack.local.up(stack.options)  # a new worker for the pool
        # while the old process lives, a retry must not run the calibration a second time
        retry(stack, flow_run)
        wait_until(lambda: flow_run_state(flow_run) == "FAILED", 120, "the refused retry")
        assert "in use" in flow_run_message(flow_run)
    finally:
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not flow_run_pids(flow_run), 30, "the old process to end")
    retry(stack, flow_run)
    wait_until(lambda: flow_run_state(flow_run) == "COMPLETED", 180, "the retry to complete")
    assert calruns(stack, request)["SlowT0"].state is S.UPLOADED


def test_cancelling_a_request_stops_its_collector_jobs(stack: Stack) -> None:
    request, flow_run = start_slow_request(stack, 5)
    wait_until(lambda: len(done_jobs(stack, "local", request, "SlowT0")) >= 2, 120, "jobs")
    cancelled = stack.b2cal("request", "cancel", str(request), "--site", "local")
    assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
    wait_until(lambda: flow_run_state(flow_run) == "CANCELLED", 60, "the run to be Cancelled")
    wait_until(lambda: not flow_run_pids(flow_run), 30, "the flow-run processes to end")
    finished = len(done_jobs(stack, "local", request, "SlowT0"))
    time.sleep(2)
    assert len(done_jobs(stack, "local", request, "SlowT0")) == finished < 24  # none goes on
    assert calruns(stack, request)["SlowT0"].state is S.CANCELLED
    assert request_state(stack, request) is RequestState.CANCELLED


# --- bad input -----------------------------------------------------------------------------
def test_bad_requests_are_refused_with_one_line_and_leave_nothing(stack: Stack) -> None:
    with stack.db() as db:
        before = len(db.requests(limit=1000))
    assert_one_line_error(
        stack.b2cal("request", "create", "--exp", "1", "--runs", "1-2", "--calibrations", "Nope"),
        "Nope",
    )
    assert_one_line_error(
        stack.b2cal(
            "request",
            "create",
            "--exp",
            "9",
            "--runs",
            "1-2",
            "--calibrations",
            "ChannelT0",
            "--site",
            "local",
        ),
        "no registered data",
    )
    assert_one_line_error(
        stack.b2cal(
            "request",
            "create",
            "--exp",
            "1",
            "--runs",
            "1-2",
            "--calibrations",
            "ChannelT0",
            "--site",
            "cern",
        ),
        "site cern",
    )
    unreachable = dict(stack.process_env(), PREFECT_API_URL="http://127.0.0.1:9/api")
    down = subprocess.run(
        [
            str(B2CAL),
            "request",
            "create",
            "--exp",
            "1",
            "--runs",
            "1-2",
            "--calibrations",
            "ChannelT0",
            "--site",
            "local",
        ],
        capture_output=True,
        text=True,
        env=unreachable,
        timeout=120,
    )
    assert_one_line_error(down, "cannot be reached")
    with stack.db() as db:
        assert len(db.requests(limit=1000)) == before  # nothing was created
    # parameters that fail the flow's schema create no run
    runs_before = len(flow_runs("site:local"))
    bad = stack.prefect(
        "deployment", "run", "process-request/local", "--param", "request_id=not-a-number"
    )
    assert bad.returncode != 0
    assert len(flow_runs("site:local")) == runs_before
    # a request that does not exist fails its run at the start, saying so
    missing = stack.prefect(
        "deployment", "run", "process-request/local", "--param", "request_id=999", "--watch"
    )
    assert missing.returncode != 0
    flow_run = missing.stdout.split("UUID: ")[1].split()[0]
    assert "no request 999" in flow_run_message(flow_run)
    # ... and the failure is announced to the webhook
    failed = stack.receiver.wait_for(
        lambda d: d.get("kind") == "failed" and d.get("id") == flow_run
    )
    assert "no request 999" in failed["message"]


def test_a_site_without_a_worker_says_the_request_waits(stack: Stack) -> None:
    stack.copy_toy(2, "desy")
    assert stack.b2cal("discover", "--site", "desy").returncode == 0
    created = stack.b2cal(
        "request",
        "create",
        "--site",
        "desy",
        "--exp",
        "2",
        "--runs",
        "1-4",
        "--calibrations",
        "ChannelT0",
    )
    request = created_request(created)
    with stack.db() as db:
        shown = db.request(request)
    assert shown.message == "waiting for a worker: work pool desy has none online"
    cancelled = stack.b2cal("request", "cancel", str(request), "--site", "desy")
    assert cancelled.returncode == 0, cancelled.stderr
