"""The prompt-calibration loop through real Prefect: a server on loopback, real process workers,
the deployments of prefect.yaml, started by b2cal's own local stack (tests/prefect_stack.py):
a prompt request end to end, sign-off, bad input."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from cli import B2CAL, assert_one_line_error
from prefect_stack import (
    CALIBRATION_NAMES,
    PREFECT,
    PromptRequest,
    S,
    Stack,
    calruns,
    created_request,
    flow_run_message,
    flow_run_state,
    flow_runs,
    request_state,
    task_runs,
    wait_until,
)

from b2cal.caf.records import IterationResult
from b2cal.db.states import RequestState

pytestmark = [pytest.mark.stack, pytest.mark.usefixtures("in_stack")]


def test_a_prompt_request_runs_through_the_deployments_and_closes(
    stack: Stack, prompt_request: PromptRequest
) -> None:
    # discovered, created without a start, started with the command it printed (the fixture)
    assert "closed e1 bucket 1: runs 1-8" in prompt_request.discovered
    request = prompt_request.request
    assert prompt_request.command == ["process-request/local", "--param", f"request_id={request}"]
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
    # the run started with prefect deployment run carries its request's tags too
    assert {f"request:{request}", "kind:prompt", "exp:1", "bucket:1"} <= set(
        runs[f"request {request}"].tags
    )
    assert {"calib:ChannelT0", "exp:1", "bucket:1", "site:local", "kind:prompt"} <= set(
        runs["ChannelT0 · e1 bucket 1"].tags
    )
    # each collection is one task per batch of jobs (the local test site: two jobs a batch)
    collects = sorted(r.name for r in task_runs(runs["ChannelT0 · e1 bucket 1"].id)
                      if r.name.startswith("collect"))  # fmt: skip
    assert collects == [
        "collect · ChannelT0 · iter 0 · jobs 0-1",
        "collect · ChannelT0 · iter 0 · jobs 2-3",
    ]
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
    # algorithm executions ran in the flow-run process's pool, ChannelT0's runs side by side
    t0 = IterationResult.read(out / "ChannelT0" / "iterations" / "0" / "result.json")
    assert t0 is not None and len(t0.executions) == 8
    assert all(e["folder"].startswith("algorithm/executions/") for e in t0.executions)
    assert len({e["process"] for e in t0.executions}) == 2
    print(f"prompt request end to end: {prompt_request.seconds:.1f} s")


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
    beamspot = signoff("BeamSpot", "approve")  # blocked: its dependency is rejected
    assert beamspot.returncode == 0, beamspot.stderr
    assert signoff("ChannelGain", "approve").returncode == 0
    wait_until(lambda: calruns(stack, request)["ChannelGain"].state is S.UPLOADED, 120, "upload")
    started = " ".join(beamspot.stdout.split())
    if "flow run " in started:  # the BeamSpot sign-off run has had its chance
        run = started.rsplit("flow run ", 1)[1].split()[0]
        ended = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
        wait_until(lambda: flow_run_state(run) in ended, 120, "BeamSpot's sign-off run to end")
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
    # desy is not served by this stack (no pool, no deployments: nothing that looks broken in
    # the UI); deployed by hand as a site does it (prefect.yaml), it has no worker here
    checkout = Path(__file__).resolve().parents[1]
    env = dict(stack.process_env(), B2CAL_CHECKOUT=str(checkout))
    for command in (["work-pool", "create", "desy", "--type", "process"],
                    ["--no-prompt", "deploy", "--name", "*/desy"]):  # fmt: skip
        done = subprocess.run([str(PREFECT), *command], cwd=checkout, env=env, text=True,
                              capture_output=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
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
