"""Crashes, retries and cancellation through real Prefect (tests/prefect_stack.py): a killed
flow-run process, a lost node (worker and process gone), a retry while the old process lives,
a cancelled request."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path

import pytest
from prefect_stack import (
    S,
    Stack,
    calruns,
    created_request,
    flow_run_message,
    flow_run_pids,
    flow_run_state,
    outputdb_bytes,
    request_state,
    wait_until,
)

from b2cal.db.states import RequestState

pytestmark = [pytest.mark.stack, pytest.mark.usefixtures("in_stack")]


def retry(stack: Stack, flow_run: str) -> None:
    """``prefect flow-run retry`` of a crashed run, as a user would."""
    retried = stack.prefect("flow-run", "retry", flow_run)
    assert retried.returncode == 0, retried.stdout + retried.stderr


def reported_by_the_worker(flow_run: str) -> None:
    """Until the worker that ran the killed process has reported its crash. (A retry before
    that report is overwritten by it while the worker already runs the retry, and a second
    retry would then start it twice: a Prefect race, which b2cal's calibration locks turn into
    a refused run rather than a double computation.)"""
    crash = "infrastructure exited with non-zero status"
    wait_until(lambda: crash in flow_run_message(flow_run), 60, "the worker's crash report")


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
    reported_by_the_worker(flow_run)
    assert flow_run_state(flow_run) == "CRASHED"
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
    # the collector jobs ran in those processes (they share the flow run's environment): with
    # them gone, no job can finish later
    assert len(done_jobs(stack, "local", request, "SlowT0")) < 24
    assert calruns(stack, request)["SlowT0"].state is S.CANCELLED
    assert request_state(stack, request) is RequestState.CANCELLED
