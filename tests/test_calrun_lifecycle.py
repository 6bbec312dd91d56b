"""A calibration run's lifecycle in the state database (b2cal.processing.lifecycle), on SQLite
without Prefect: what a restarted run does in each state, the state following the engine's
steps and outcome, the failure policy (the same line in the workspace and the database, a
cancelled run left cancelled), and when the site approves without a person."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from calibration_runs import TO_SIGNOFF, started_request
from counting import counting

from b2cal.caf.calibration import AlgorithmResult
from b2cal.caf.lifecycle import Step, StepKind
from b2cal.caf.plan import CalibrationRequest
from b2cal.caf.records import CalibrationOutcome
from b2cal.caf.steps import plan
from b2cal.caf.workspace import Workspace
from b2cal.db.database import StateDatabase
from b2cal.db.states import CalRunState, SignoffDecision
from b2cal.errors import CollectionFailed, Interrupted, StateConflict
from b2cal.processing.lifecycle import (
    AUTO_APPROVER,
    Resume,
    approved_by_the_site,
    cancelled,
    failed,
    not_run,
    on_start,
    outcome_recorded,
    step_started,
    taken_up,
    validated,
    waits_for_a_person,
)
from b2cal.sites import SignoffPolicy, Site

pytestmark = pytest.mark.unit
S = CalRunState


@pytest.fixture
def db(tmp_path: Path) -> Iterator[StateDatabase]:
    with StateDatabase(f"sqlite:///{tmp_path / 'state.sqlite'}") as opened:
        yield opened


def test_a_started_run_does_what_its_state_asks(db: StateDatabase) -> None:
    runs = started_request(db, ("ChannelT0", "ChannelGain", "BeamSpot"))
    t0, gain, spot = (db.calibration_run(runs[n]) for n in ("ChannelT0", "ChannelGain", "BeamSpot"))
    assert on_start(t0) is Resume.COMPUTE  # PLANNED
    for state in TO_SIGNOFF:
        db.move(gain.id, state)
    assert on_start(db.calibration_run(gain.id)) is Resume.SIGNOFF
    db.signoff(gain.id, SignoffDecision.APPROVE, "/CN=Ada", "ok")
    assert on_start(db.calibration_run(gain.id)) is Resume.UPLOAD
    db.move(spot.id, S.COLLECTING)
    db.move(spot.id, S.FAILED, message="jobs failed")
    assert on_start(db.calibration_run(spot.id)) is Resume.COMPUTE  # a retry tries again
    db.cancel_request(t0.request_id, "/CN=Ada")
    assert on_start(db.calibration_run(t0.id)) is Resume.NOTHING


def test_a_run_taken_up_waits_for_its_dependencies_or_is_not_run(db: StateDatabase) -> None:
    runs = started_request(db, ("ChannelT0", "ChannelGain", "ModuleAlignment", "BeamSpot"))
    t0, gain, align = runs["ChannelT0"], runs["ChannelGain"], runs["ModuleAlignment"]
    waiting = taken_up(db, gain, "flow-1", ["ChannelT0"])
    assert (waiting.state, waiting.flow_run_id) == (S.PLANNED, "flow-1")
    assert waiting.message == "waiting for the payloads of ChannelT0"
    assert not not_run(db, waiting, ["ChannelT0"])  # still running: it may run
    db.move(t0, S.COLLECTING)
    db.move(t0, S.FAILED, message="jobs failed")
    assert taken_up(db, t0, "flow-2").message == ""  # a failed run is taken up again
    db.move(t0, S.COLLECTING)
    db.move(t0, S.ALGORITHM)
    db.move(t0, S.NOT_ENOUGH_DATA)
    assert not_run(db, db.calibration_run(align), ["ChannelT0", "ChannelGain"])
    blocked = db.calibration_run(align)
    assert (blocked.state, blocked.message) == (
        S.FAILED,
        "not run: ChannelT0 ended NOT_ENOUGH_DATA",
    )
    # cancelled meanwhile: not taken up, and a cancelled flow run leaves an ended run alone
    cancelled(db, runs["BeamSpot"], "flow run cancelled")
    assert db.calibration_run(runs["BeamSpot"]).state is S.CANCELLED
    with pytest.raises(StateConflict):
        taken_up(db, runs["BeamSpot"], "flow-3")
    cancelled(db, align, "flow run cancelled")
    assert db.calibration_run(align).state is S.FAILED


def test_a_validation_is_recorded_and_the_site_may_approve_it(db: StateDatabase) -> None:
    runs = started_request(db, ("ChannelT0", "BeamSpot"), through=TO_SIGNOFF[:-1])
    good = validated(db, runs["ChannelT0"], {"passed": True, "problems": []})
    assert (good.state, good.message) == (S.AWAITING_SIGNOFF, "validated: waiting for a sign-off")
    bad = validated(db, runs["BeamSpot"], {"passed": False, "problems": ["t0 moved", "x"]})
    assert bad.message == "validation failed: t0 moved; x" and bad.summary["passed"] is False  # type: ignore[index]
    db.signoff(runs["BeamSpot"], SignoffDecision.REJECT, "/CN=Ada", "no")
    approved_by_the_site(db, runs["ChannelT0"])
    approved_by_the_site(db, runs["BeamSpot"])  # someone decided meanwhile: left so
    assert db.calibration_run(runs["ChannelT0"]).state is S.APPROVED
    assert db.calibration_run(runs["BeamSpot"]).state is S.REJECTED
    assert db.approval(runs["ChannelT0"]).actor == AUTO_APPROVER  # type: ignore[union-attr]


def test_the_state_follows_the_steps_and_the_outcome(db: StateDatabase) -> None:
    runs = started_request(db, ("ChannelT0", "ChannelGain", "BeamSpot"))
    for name, result, ends in (("ChannelT0", AlgorithmResult.OK, S.VALIDATING),
                               ("ChannelGain", AlgorithmResult.NOT_ENOUGH_DATA, S.NOT_ENOUGH_DATA),
                               ("BeamSpot", AlgorithmResult.FAILURE, S.FAILED)):  # fmt: skip
        calrun = runs[name]
        step_started(db, calrun, Step(StepKind.COLLECT, 0))
        assert (db.calibration_run(calrun).state, db.calibration_run(calrun).iteration) == (
            S.COLLECTING, 0)  # fmt: skip
        step_started(db, calrun, Step(StepKind.ALGORITHM, 0))
        step_started(db, calrun, Step(StepKind.FINISH))  # stays ALGORITHM
        assert db.calibration_run(calrun).state is S.ALGORITHM
        outcome = CalibrationOutcome(calibration=name, result=result, message=f"{name} said so")
        moved = outcome_recorded(db, calrun, outcome)
        assert moved.state is ends, name
        assert moved.message == f"{name} said so" or ends is S.VALIDATING


def test_a_failure_says_the_same_in_the_workspace_and_the_database(
    db: StateDatabase, small_storage: Path, tmp_path: Path
) -> None:
    workspace = Workspace(tmp_path / "out")
    request = CalibrationRequest(exp=1, first_run=1, last_run=4, storage=small_storage)
    plan(workspace, request, {"Counting": counting()})
    area = workspace.calibration("Counting")
    runs = started_request(db, ("ChannelT0", "ChannelGain", "BeamSpot"))
    line = failed(
        db, runs["ChannelT0"], CollectionFailed("Counting", 0, 2, 1, 3, "exit 1", "job.log"), area
    )
    assert db.calibration_run(runs["ChannelT0"]).state is S.FAILED
    assert db.calibration_run(runs["ChannelT0"]).message == line == area.outcome().message  # type: ignore[union-attr]
    try:
        raise ValueError("a bug")
    except ValueError as exc:
        bug = failed(db, runs["ChannelGain"], exc, area)
    assert bug.startswith("internal error ValueError: a bug (see ") and area.error_log.is_file()
    db.move(runs["BeamSpot"], S.COLLECTING)
    stopped = failed(db, runs["BeamSpot"], Interrupted("Counting before its collect 0"), area)
    assert "rerun to resume" in stopped and area.outcome().message == bug  # type: ignore[union-attr]
    # an interrupt is no failure: still active (the retry of its flow run resumes it)
    interrupted = db.calibration_run(runs["BeamSpot"])
    assert (interrupted.state, interrupted.message) == (S.PLANNED, stopped)
    # cancelled meanwhile: it stays cancelled
    again = started_request(db, ("ChannelT0",))
    db.cancel_request(db.calibration_run(again["ChannelT0"]).request_id, "/CN=Ada")
    failed(db, again["ChannelT0"], CollectionFailed("Counting", 0, 2, 1, 1, "exit 1", "job.log"))
    assert db.calibration_run(again["ChannelT0"]).state is S.CANCELLED


def test_the_site_approves_alone_only_what_passed_under_an_auto_policy(tmp_path: Path) -> None:
    policies = {"default": SignoffPolicy.EXPERT, "BeamSpot": SignoffPolicy.AUTO}
    site = Site(name="lab", storage_roots=[tmp_path], work_root=tmp_path, signoff=policies)
    assert waits_for_a_person(site, "BeamSpot", {"passed": True}) is None
    assert waits_for_a_person(site, "BeamSpot", {"passed": False}) == "validation failed"
    assert waits_for_a_person(site, "BeamSpot", None) == "validation failed"
    expert = "the site's policy wants an expert"
    assert waits_for_a_person(site, "ChannelT0", {"passed": True}) == expert
