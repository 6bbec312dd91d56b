"""Crashes, healing and cancellation through real Prefect (tests/prefect_stack.py): a killed
flow-run process and a lost node (worker and process gone) healed by b2cal's reconciler, runs
that outlive their worker, a retry while the old process lives refused, a cancelled
request."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect_stack import (
    S,
    Stack,
    calruns,
    created_request,
    done_jobs,
    failing_always,
    flow_run_message,
    flow_run_pids,
    flow_run_state,
    outputdb_bytes,
    reference_output,
    request_state,
    wait_until,
)

from b2cal.core.processes import alive
from b2cal.db import discovery
from b2cal.db.states import FileStatus, RequestState
from b2cal.orchestrator.launcher import running as detached_runs
from b2cal.requests.healing import HEALER, RETRY_ACTION
from b2cal.requests.reconciler import reconcile
from b2cal.sites import load_site

pytestmark = [pytest.mark.stack, pytest.mark.usefixtures("in_stack")]


def retry(stack: Stack, flow_run: str) -> None:
    """``prefect flow-run retry`` of a crashed run, as a user would."""
    retried = stack.prefect("flow-run", "retry", flow_run)
    assert retried.returncode == 0, retried.stdout + retried.stderr


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


def healed_by_b2cal(stack: Stack, request: int, flow_run: str, killed: float) -> None:
    """Until the request's flow run, retried by b2cal's reconciler, has completed; the retry
    is in the action log (actor b2cal)."""
    wait_until(lambda: flow_run_state(flow_run) == "COMPLETED", 240, "b2cal to heal the run")
    print(f"heal time (kill -> flow run COMPLETED): {time.monotonic() - killed:.0f} s")
    with stack.db() as db:
        retries = [a for a in db.actions(target=f"request {request}") if a.action == RETRY_ACTION]
    assert [(a.actor, a.detail["flow_run"]) for a in retries] == [(HEALER, flow_run)]
    assert request_state(stack, request) is RequestState.DONE


def test_a_killed_flow_run_is_healed_by_b2cal_reusing_finished_work(
    stack: Stack, tmp_path: Path
) -> None:
    request, flow_run = start_slow_request(stack, 3)

    def four_done() -> dict[str, int] | None:
        done = done_jobs(stack, "local", request, "SlowT0")
        return done if len(done) >= 4 else None

    before = wait_until(four_done, 120, "four collector jobs done")
    first_subflow = calruns(stack, request)["SlowT0"].flow_run_id
    for pid in flow_run_pids(flow_run):
        os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    healed_by_b2cal(stack, request, flow_run, killed)
    after = done_jobs(stack, "local", request, "SlowT0")
    assert len(after) == 24
    assert {job: after[job] for job in before} == before  # finished jobs were not run again
    assert calruns(stack, request)["SlowT0"].state is S.UPLOADED
    output = stack.workspace("local", request) / "output" / "SlowT0" / "outputdb"
    assert outputdb_bytes(output) == reference_output(stack, request, "SlowT0", tmp_path)
    # Prefect 3.9 reruns the subflow of the retried parent under the same flow run; were it a
    # fresh one, the first attempt's, marked Crashed late (no heartbeat), changes nothing
    assert first_subflow
    if first_subflow == calruns(stack, request)["SlowT0"].flow_run_id:
        assert flow_run_state(first_subflow) == "COMPLETED"
    else:
        wait_until(lambda: flow_run_state(first_subflow) == "CRASHED", 120, "the old subflow")
    with stack.db() as db:  # a pass of the reconciler, here
        assert reconcile(load_site("local"), db) == []
    assert calruns(stack, request)["SlowT0"].state is S.UPLOADED


def test_a_lost_node_is_healed_once_a_worker_is_back(stack: Stack) -> None:
    """Worker and flow-run process killed: b2cal sees the process gone on its host (no wait
    for the heartbeat rule), retries, and the worker that ``server up`` starts runs it."""
    request, flow_run = start_slow_request(stack, 10)
    wait_until(lambda: len(done_jobs(stack, "local", request, "SlowT0")) >= 2, 120, "jobs")
    os.kill(stack.local.state()["workers"]["local"], signal.SIGKILL)
    for pid in flow_run_pids(flow_run):
        os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    seen = "gone (seen by b2cal)"  # in the Crashed state's message, then in the retry's
    wait_until(lambda: seen in flow_run_message(flow_run), 60, "b2cal to see the lost process")
    stack.local.up(stack.options)  # as a service manager restarts the worker
    healed_by_b2cal(stack, request, flow_run, killed)


@contextlib.contextmanager
def slower_jobs(stack: Stack, seconds: float) -> Iterator[None]:
    """SlowT0's collector jobs sleep ``seconds`` per file while inside."""
    said = Path(stack.env["B2CAL_TEST_FLAKY"]) / "slow-seconds"
    said.parent.mkdir(parents=True, exist_ok=True)
    said.write_text(str(seconds))
    try:
        yield
    finally:
        said.unlink()


def restart_worker(stack: Stack, sig: signal.Signals) -> None:
    """The local pool's worker stopped with ``sig``, then started again as a service manager
    would."""
    worker = stack.local.state()["workers"]["local"]
    os.kill(worker, sig)
    wait_until(lambda: not alive(worker), 60, "the worker to stop")
    stack.local.up(stack.options)


def test_a_stopped_or_killed_worker_leaves_its_runs_running(stack: Stack) -> None:
    """SIGTERM (a service manager's stop) of the worker that started one run, SIGKILL of the
    worker that started the next: both runs go on in the same processes (detached from their
    worker by b2cal's launcher) and finish; no crash, no retry, nothing FAILED."""
    runs = []
    for exp, sig in ((11, signal.SIGTERM), (12, signal.SIGKILL)):
        with slower_jobs(stack, 1.0):  # each run outlasts a restart of the worker
            request, flow_run = start_slow_request(stack, exp)
            started = functools.partial(done_jobs, stack, "local", request, "SlowT0")
            wait_until(lambda: len(started()) >= 2, 120, "jobs")  # noqa: B023 (called at once)
            supervisor = detached_runs()[flow_run]
            restart_worker(stack, sig)
        runs.append((request, flow_run, supervisor))
    for request, flow_run, supervisor in runs:
        assert detached_runs().get(flow_run) in (supervisor, None)  # the same, or ended
        state = functools.partial(flow_run_state, flow_run)
        wait_until(lambda: state() == "COMPLETED", 240, "the run to complete")  # noqa: B023
        calrun = calruns(stack, request)["SlowT0"]
        assert (calrun.state, calrun.attempt) == (S.UPLOADED, 1)
        assert request_state(stack, request) is RequestState.DONE
        with stack.db() as db:
            actions = [a.action for a in db.actions(target=f"request {request}")]
        assert RETRY_ACTION not in actions


def test_a_retry_while_the_old_process_lives_is_refused(stack: Stack) -> None:
    """Worker gone, flow-run process frozen (no heartbeat, but it holds its calibration's
    lock): the heartbeat automation marks the run Crashed, b2cal retries it, and the retry is
    refused rather than computing the calibration twice; a person's retry once the old
    process has ended completes it."""
    request, flow_run = start_slow_request(stack, 4)
    wait_until(lambda: len(done_jobs(stack, "local", request, "SlowT0")) >= 2, 120, "jobs")
    worker = stack.local.state()["workers"]["local"]
    os.kill(worker, signal.SIGKILL)  # the worker goes; its flow-run process stays, re-parented
    frozen = flow_run_pids(flow_run)
    assert frozen
    for pid in frozen:  # and sends no heartbeat any more, but holds its calibration's lock
        os.kill(pid, signal.SIGSTOP)
    try:
        wait_until(lambda: "no heartbeat" in flow_run_message(flow_run) or
                   flow_run_state(flow_run) != "RUNNING", 150, "the automation")  # fmt: skip
        stack.local.up(stack.options)  # a new worker for the pool
        wait_until(lambda: flow_run_state(flow_run) == "FAILED", 150, "the refused retry")
        assert "in use" in flow_run_message(flow_run)
    finally:
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not flow_run_pids(flow_run), 30, "the old process to end")
    retry(stack, flow_run)
    wait_until(lambda: flow_run_state(flow_run) == "COMPLETED", 180, "the retry to complete")
    assert calruns(stack, request)["SlowT0"].state is S.UPLOADED


def test_a_collector_that_always_fails_is_not_a_crash(stack: Stack) -> None:
    """A collector failing on purpose every time: the calibration is FAILED with its reason,
    its flow run Failed (not Crashed) and announced once, no automatic retry, and the input
    files it broke on are not marked bad (they read well alone)."""
    with failing_always(stack, run=2):
        stack.copy_toy(2, "local")
        assert stack.b2cal("discover", "--site", "local").returncode == 0
        create = ["request", "create", "--site", "local", "--exp", "2", "--runs", "1-4"]
        request = created_request(stack.b2cal(*create, "--calibrations", "FlakyT0"))
        with stack.db() as db:
            flow_run = db.request(request).flow_run_id
        assert flow_run
        waited = stack.b2cal("request", "wait", str(request), "--timeout", "240")
        assert waited.returncode == 2, waited.stdout + waited.stderr
        calrun = calruns(stack, request)["FlakyT0"]
        assert calrun.state is S.FAILED and "run 2 fails every time" in (calrun.message or "")
        # the request's state is written before its flow run ends
        wait_until(
            lambda: flow_run_state(flow_run) in ("FAILED", "CRASHED", "COMPLETED"), 60, "end"
        )
        assert flow_run_state(flow_run) == "FAILED"
        stack.receiver.wait_for(lambda d: d.get("kind") == "failed" and d.get("id") == flow_run)
        with stack.db() as db:
            assert reconcile(load_site("local"), db) == []  # nothing to heal
            actions = db.actions(target=f"request {request}")
            assert RETRY_ACTION not in [a.action for a in actions]
            bad = [f for f in discovery.files(db, "local", FileStatus.BAD) if f.exp == 2]
        assert bad == []
        announced = [d for d in stack.receiver.received if d.get("id") == flow_run]
        assert len(announced) == 1


def test_cancelling_a_request_stops_its_collector_jobs_after_its_worker_restarted(
    stack: Stack,
) -> None:
    """The run outlives the worker that started it; its own supervisor stops it."""
    # the run must outlast a restart of the worker (``server up`` again: ~16 s, more on a
    # loaded machine) with jobs to spare: 24 jobs of 4 s on two workers
    with slower_jobs(stack, 4.0):
        request, flow_run = start_slow_request(stack, 5)
        wait_until(lambda: len(done_jobs(stack, "local", request, "SlowT0")) >= 2, 120, "jobs")
        restart_worker(stack, signal.SIGTERM)
        assert flow_run in detached_runs()
        cancelled = stack.b2cal("request", "cancel", str(request), "--site", "local")
        assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
        wait_until(lambda: flow_run_state(flow_run) == "CANCELLED", 60, "the run Cancelled")
        wait_until(lambda: not flow_run_pids(flow_run), 30, "the flow-run processes to end")
    # the collector jobs ran in those processes (they share the flow run's environment): with
    # them gone, no job can finish later
    assert len(done_jobs(stack, "local", request, "SlowT0")) < 24
    assert calruns(stack, request)["SlowT0"].state is S.CANCELLED
    assert request_state(stack, request) is RequestState.CANCELLED
