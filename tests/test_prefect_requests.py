"""A request made and followed with Prefect alone (``calibration-request/<site>``, Prefect's own
CLI): it makes the same payloads as one made by ``b2cal request create``, survives a crash
right after it made its request without making a second, is named and tagged after its
request, and every wrong input is refused in one line with no traceback and no request."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from prefect_stack import (
    S,
    Stack,
    calruns,
    flow_run_message,
    flow_run_pids,
    flow_runs,
    outputdb_bytes,
    reference_output,
    request_state,
    wait_until,
)

from b2cal.db.states import RequestState
from b2cal.toy.generate import generate_toy

pytestmark = [pytest.mark.stack, pytest.mark.usefixtures("in_stack")]


def run_deployment(stack: Stack, name: str, *params: str, watch: bool = False) -> Any:
    args = ["deployment", "run", name]
    for param in params:
        args += ["--param", param]
    return stack.prefect(*args, *(["--watch"] if watch else []))


def flow_run_id(result: Any) -> str:
    assert "UUID: " in result.stdout, result.stdout + result.stderr
    return str(result.stdout.split("UUID: ")[1].split()[0])


def log_lines(flow_run: str) -> list[str]:
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[UUID(flow_run)]))
        )
    return [log.message for log in logs]


def assert_refused(stack: Stack, result: Any, *fragments: str) -> None:
    """Failed at its start with one line (log and state message), no traceback, no request."""
    assert result.returncode != 0
    flow_run = flow_run_id(result)
    message = flow_run_message(flow_run)
    assert message.startswith("refused: ") and "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    lines = log_lines(flow_run)
    assert not [line for line in lines if "Traceback" in line], lines
    assert any(line.startswith("refused: ") for line in lines), lines
    with stack.db() as db:
        assert db.request_of_flow_run(flow_run) is None


def test_a_request_from_prefect_alone_survives_a_crash_and_matches_b2cal(
    stack: Stack, tmp_path: Path
) -> None:
    generate_toy(stack.home / "storage-local", 15, range(1, 5), seed=15)
    assert stack.b2cal("discover", "--site", "local").returncode == 0
    with stack.db() as db:
        before = len(db.requests(limit=1000))
    started = run_deployment(
        stack, "calibration-request/local", "exp=15", "runs=1-4", 'calibrations=["ChannelT0"]'
    )
    assert started.returncode == 0, started.stdout + started.stderr
    flow_run = flow_run_id(started)

    def made() -> Any:
        with stack.db() as db:
            return db.request_of_flow_run(flow_run)

    request = wait_until(made, 120, "the flow run to make its request")
    # killed right after it made its request: b2cal's healing runs it again (same flow
    # run), and it finds its request instead of making a second one
    for pid in flow_run_pids(flow_run):
        os.kill(pid, signal.SIGKILL)
    wait_until(
        lambda: request_state(stack, request.id) is RequestState.DONE, 300, "the request to end"
    )
    with stack.db() as db:
        assert len(db.requests(limit=1000)) == before + 1
        assert db.request_of_flow_run(flow_run).id == request.id
        retried = [a for a in db.actions(limit=1000) if a.detail.get("flow_run") == flow_run]
    assert retried, "the crash was healed by a retry"
    assert calruns(stack, request.id)["ChannelT0"].state is S.UPLOADED
    # the same payloads as a clean run of the same calibration on the same files
    output = stack.workspace("local", request.id) / "output" / "ChannelT0" / "outputdb"
    assert outputdb_bytes(output) == reference_output(stack, request.id, "ChannelT0", tmp_path)
    # named and tagged after its request, as a run started by b2cal is
    (found,) = [run for run in flow_runs(f"request:{request.id}") if str(run.id) == flow_run]
    assert found.name == f"request {request.id}"
    assert {f"request:{request.id}", "kind:recalibration", "exp:15", "site:local"} <= set(
        found.tags
    )
    shown = stack.b2cal("request", "show", str(request.id), "--site", "local")
    assert f"request {request.id} (recalibration, e15 runs 1-4): DONE" in shown.stdout


def test_wrong_input_is_refused_in_one_line(stack: Stack) -> None:
    # the wrong type: Prefect refuses it before a run exists
    runs_before = len(flow_runs("site:local"))
    wrong_type = run_deployment(stack, "calibration-request/local", "exp=abc", "runs=1-4")
    assert wrong_type.returncode != 0 and "UUID: " not in wrong_type.stdout
    bad_range = run_deployment(stack, "calibration-request/local", "exp=2", "runs=4-x")
    assert bad_range.returncode != 0 and "UUID: " not in bad_range.stdout
    assert len(flow_runs("site:local")) == runs_before
    # what only b2cal can check: the run fails at its start, saying why, and makes nothing
    refusals = [
        (("exp=2", 'calibrations=["NoSuchCalibration"]'), "NoSuchCalibration"),
        (("exp=77", 'calibrations=["ChannelT0"]'), "77"),
        (("exp=2", 'calibrations=["ChannelT0"]', "site=bnl"),
         "site 'bnl' is not the site of this work pool (local)"),
    ]  # fmt: skip
    for params, said in refusals:
        made = run_deployment(stack, "calibration-request/local", "runs=1-4", *params, watch=True)
        assert_refused(stack, made, said)
    assert_refused(
        stack,
        run_deployment(stack, "process-request/local", "request_id=999", watch=True),
        "no request 999",
    )
