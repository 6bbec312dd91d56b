"""Calibrations of one request at two sites, and calibrations skipped, through real Prefect
(tests/prefect_stack.py: the ``local`` site approves automatically, ``bnl`` waits for experts).

A calibration placed at another site runs there, in that site's workspace, as a ``calibrate``
deployment run on that site's pool; a dependant of it starts once it is uploaded and reads its
payloads from the staging tag. A skipped calibration leaves its dependants to the input tags.
Either way the payloads are byte for byte those of one ``caf run`` over the same data.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli import assert_one_line_error
from prefect_stack import (
    CALIBRATION_NAMES,
    S,
    Stack,
    calruns,
    created_request,
    flow_runs,
    request_state,
    task_runs,
    wait_until,
)

from b2cal.caf.workspace import Workspace
from b2cal.core.localdb import LocalDatabase
from b2cal.db.states import RequestState

pytestmark = [pytest.mark.stack, pytest.mark.usefixtures("in_stack")]


def by_iov(outputdb: Path) -> dict[tuple[str, str], bytes]:
    """A local database's payload files by (name, IoV): revisions differ between databases."""
    return {(e.name, str(e.iov)): e.read_bytes() for e in LocalDatabase(outputdb).entries}


def reference_run(stack: Stack, site: str, exp: int, names: str, output: Path) -> Workspace:
    """The same calibrations in one ``caf run`` over the site's copy of the data."""
    ran = stack.b2cal(
        "caf", "run", "--storage", stack.home / f"storage-{site}", "--exp", str(exp),
        "--runs", "1-4", "--calibrations", names, "--output", output,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    return Workspace(output)


def staging(stack: Stack, request: int) -> dict[str, object]:
    shown = stack.b2cal("cdb", "show", f"staging-recalibration-{request}", "--json")
    assert shown.returncode == 0, shown.stderr
    doc: dict[str, object] = json.loads(shown.stdout)
    return doc


def test_a_calibration_placed_at_another_site_runs_there_and_feeds_its_dependants(
    stack: Stack, tmp_path: Path
) -> None:
    for site in ("local", "bnl"):
        stack.copy_toy(6, site)
        assert stack.b2cal("discover", "--site", site).returncode == 0
    create = [
        "request", "create", "--site", "local", "--exp", "6", "--runs", "1-4",
        "--calibrations", "ChannelGain,BeamSpot", "--place", "ModuleAlignment=bnl",
    ]  # fmt: skip
    dry = stack.b2cal(*create, "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "at site bnl (pool bnl): ModuleAlignment" in dry.stdout, dry.stdout
    assert "BeamSpot: a calibrate/local run once ModuleAlignment is uploaded" in dry.stdout
    assert_one_line_error(stack.b2cal(*create, "--place", "Nope=bnl"), "--place names Nope")
    assert_one_line_error(
        stack.b2cal(*create, "--place", "BeamSpot=cern"),
        "the site 'cern', which is not a known site",
    )
    request = created_request(stack.b2cal(*create))

    def placed_waits() -> bool:
        states = {name: run.state for name, run in calruns(stack, request).items()}
        return states.get("ModuleAlignment") is S.AWAITING_SIGNOFF and all(
            states.get(name) is S.UPLOADED for name in ("ChannelT0", "ChannelGain")
        )

    wait_until(placed_waits, 240, "ChannelT0 and ChannelGain uploaded, ModuleAlignment waiting")
    runs = calruns(stack, request)
    # BeamSpot waits for ModuleAlignment's upload, holding no flow run, and the request says so
    assert runs["BeamSpot"].state is S.PLANNED and runs["BeamSpot"].flow_run_id is None
    assert request_state(stack, request) is RequestState.WAITING
    # ModuleAlignment was computed at bnl, in bnl's workspace, by a run on bnl's pool
    bnl, local = stack.workspace("bnl", request), stack.workspace("local", request)
    assert (bnl / "output" / "ModuleAlignment" / "outputdb" / "database.txt").is_file()
    assert not (local / "output" / "ModuleAlignment").exists()
    assert not (bnl / "output" / "ChannelT0").exists()
    (placed,) = [r for r in flow_runs(f"request:{request}") if "calib:ModuleAlignment" in r.tags]
    assert "site:bnl" in placed.tags and "site:local" not in placed.tags

    approved = stack.b2cal(
        "signoff", str(runs["ModuleAlignment"].id), "approve", "--comment", "residuals fine"
    )
    assert approved.returncode == 0, approved.stdout + approved.stderr
    assert "sign-off/bnl" in approved.stdout  # uploaded by the site that computed it
    wait_until(lambda: request_state(stack, request) is RequestState.DONE, 240, "DONE")
    doc = staging(stack, request)
    assert doc["state"] == "TESTING"
    assert {entry["name"] for entry in doc["iovs"]} == set(CALIBRATION_NAMES)  # type: ignore[attr-defined]
    # BeamSpot read ModuleAlignment's payloads from the staging tag: those bnl computed
    outputs = {
        name: (bnl if name == "ModuleAlignment" else local) / "output" / name / "outputdb"
        for name in CALIBRATION_NAMES
    }
    fetched = by_iov(local / "upstream" / "ModuleAlignment")
    assert fetched == by_iov(outputs["ModuleAlignment"])
    # and every payload is the one a single caf run over the same data gives
    reference = reference_run(stack, "local", 6, "ChannelGain,BeamSpot", tmp_path / "reference")
    for name in CALIBRATION_NAMES:
        assert by_iov(outputs[name]) == by_iov(reference.calibration(name).outputdb), name


def test_a_skipped_calibration_leaves_its_dependants_to_the_input_tags(
    stack: Stack, tmp_path: Path
) -> None:
    stack.copy_toy(8, "bnl")
    assert stack.b2cal("discover", "--site", "bnl").returncode == 0
    # an input tag that holds ChannelT0 constants for these runs
    reference = reference_run(stack, "bnl", 8, "ChannelGain", tmp_path / "reference")
    assert stack.b2cal("cdb", "create", "t0-known").returncode == 0
    uploaded = stack.b2cal(
        "cdb", "upload", reference.calibration("ChannelT0").outputdb, "--tag", "t0-known"
    )
    assert uploaded.returncode == 0, uploaded.stderr
    request = created_request(
        stack.b2cal(
            "request", "create", "--site", "bnl", "--exp", "8", "--runs", "1-4",
            "--calibrations", "ChannelGain", "--input-tag", "t0-known",
        )
    )  # fmt: skip
    wait_until(lambda: request_state(stack, request) is RequestState.WAITING, 240, "sign-offs")
    runs = calruns(stack, request)
    t0, gain = runs["ChannelT0"], runs["ChannelGain"]
    assert (t0.state, gain.state) == (S.AWAITING_SIGNOFF, S.AWAITING_SIGNOFF)

    assert_one_line_error(stack.b2cal("request", "skip", str(t0.id)), "needs --comment")
    skipped = stack.b2cal(
        "request", "skip", str(t0.id), "--comment", "t0 known: the input tag has it"
    )
    assert skipped.returncode == 0, skipped.stdout + skipped.stderr
    assert "rerun: ChannelGain (attempt 2)" in skipped.stdout, skipped.stdout

    def gain_waits_again() -> bool:
        again = calruns(stack, request)["ChannelGain"]
        return again.attempt == 2 and again.state is S.AWAITING_SIGNOFF

    wait_until(gain_waits_again, 240, "ChannelGain computed again without ChannelT0")
    workspace = Workspace(stack.workspace("bnl", request) / "output")
    assert workspace.calibration("ChannelGain").record().elsewhere == {"ChannelT0": None}
    # the input tag's ChannelT0 stood in: the same gains as with ChannelT0 computed
    gain_output = workspace.calibration("ChannelGain").outputdb
    assert by_iov(gain_output) == by_iov(reference.calibration("ChannelGain").outputdb)

    approved = stack.b2cal("signoff", str(gain.id), "approve", "--comment", "ok")
    assert approved.returncode == 0, approved.stdout + approved.stderr
    wait_until(lambda: request_state(stack, request) is RequestState.DONE, 120, "DONE")
    doc = staging(stack, request)
    assert doc["state"] == "TESTING"
    assert {entry["name"] for entry in doc["iovs"]} == {"ChannelGain"}  # type: ignore[attr-defined]
    with stack.db() as db:
        (action,) = [a for a in db.actions(target=f"calibration run {t0.id}") if a.action == "skip"]
    assert action.outcome == "ok" and action.detail["comment"] == "t0 known: the input tag has it"
    assert_one_line_error(
        stack.b2cal("request", "skip", str(gain.id), "--comment", "too late"), "is DONE"
    )


def test_a_sites_job_limit_holds_for_all_its_collector_jobs(stack: Stack) -> None:
    """bnl's limit of four: a collection of 24 one-file jobs goes in batches of four, and at
    no moment are more than four of them handed to the backend and not yet ended."""
    stack.copy_toy(7, "bnl")
    assert stack.b2cal("discover", "--site", "bnl").returncode == 0
    request = created_request(
        stack.b2cal(
            "request", "create", "--site", "bnl", "--exp", "7", "--runs", "1-4",
            "--calibrations", "SlowT0",
        )
    )  # fmt: skip
    wait_until(lambda: request_state(stack, request) is RequestState.WAITING, 240, "sign-off")
    jobs = Workspace(stack.workspace("bnl", request) / "output").calibration("SlowT0").iteration(0)
    spans = []
    for job in jobs.jobs():
        submission, status = job.submission(), job.status()
        assert submission is not None and status is not None and status.finished is not None
        spans.append((submission.submitted.timestamp(), status.finished.timestamp()))
    assert len(spans) == 24
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    in_flight = peak = 0
    for _, step in events:
        in_flight += step
        peak = max(peak, in_flight)
    assert peak <= 4, peak
    (run,) = [r for r in flow_runs(f"request:{request}") if "calib:SlowT0" in r.tags]
    batches = sorted(t.name for t in task_runs(run.id) if t.name.startswith("collect"))
    assert len(batches) == 6 and "collect · SlowT0 · iter 0 · jobs 0-3" in batches, batches
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name("site:bnl")
    assert (limit.limit, limit.active_slots) == (4, 0)  # every slot given back
