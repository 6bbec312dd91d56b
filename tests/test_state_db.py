"""b2cal's state database on SQLite, PostgreSQL and MariaDB: schema, requests, the calibration-run
state model, sign-offs and the action log."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from b2cal.db.database import StateDatabase
from b2cal.db.schema import MIGRATIONS, VERSION_TABLE, metadata
from b2cal.db.states import (
    ACTIVE,
    CalRunState,
    RequestState,
    SignoffDecision,
    allowed_moves,
    check_move,
    request_state,
)
from b2cal.errors import StateConflict, UnknownRecord
from b2cal.sites import RequestKind

S = CalRunState
APPROVE, REJECT = SignoffDecision.APPROVE, SignoffDecision.REJECT


def make_request(db: StateDatabase, calibrations: tuple[str, ...] = ("ChannelT0",)) -> int:
    request = db.create_request(
        kind=RequestKind.PROMPT,
        site="local",
        exp=1,
        run_low=1,
        run_high=8,
        calibrations=calibrations,
        input_tags=["base"],
        actor="/DC=org/CN=Ada",
    )
    return request.id


def walk_to(db: StateDatabase, calrun: int, *states: CalRunState) -> None:
    for state in states:
        db.move(calrun, state)


def test_schema_from_migrations_matches_the_models(state_db: StateDatabase) -> None:
    with state_db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        assert compare_metadata(context, metadata) == []
        assert context.get_current_revision() == MIGRATIONS.head()
    make_request(state_db)
    with StateDatabase(state_db.database.url) as again:  # opening again migrates nothing
        assert [r.id for r in again.requests()] == [1]


def test_a_new_request_names_its_staging_tag_and_is_logged(state_db: StateDatabase) -> None:
    request = state_db.request(make_request(state_db))
    assert request.staging_tag == f"staging-prompt-{request.id}"
    assert request.state is RequestState.PENDING
    assert request.input_tags == ["base"]
    (action,) = state_db.actions()
    assert (action.actor, action.action, action.target) == (
        "/DC=org/CN=Ada",
        "request create",
        f"request {request.id}",
    )
    with pytest.raises(UnknownRecord, match="no request 99"):
        state_db.request(99)


def test_starting_a_request_twice_creates_its_calibration_runs_once(
    state_db: StateDatabase,
) -> None:
    request = make_request(state_db, ("ChannelT0", "ChannelGain"))
    first = state_db.start_request(request)
    again = state_db.start_request(request)
    assert [c.id for c in first] == [c.id for c in again]
    assert [(c.calibration, c.state) for c in first] == [
        ("ChannelT0", S.PLANNED),
        ("ChannelGain", S.PLANNED),
    ]
    assert state_db.request(request).state is RequestState.RUNNING


def test_the_state_model_refuses_moves_it_does_not_know(state_db: StateDatabase) -> None:
    (calrun,) = state_db.start_request(make_request(state_db))
    with pytest.raises(StateConflict, match="is PLANNED, so it cannot become UPLOADED"):
        state_db.move(calrun.id, S.UPLOADED)
    walk_to(state_db, calrun.id, S.COLLECTING, S.ALGORITHM, S.COLLECTING, S.ALGORITHM)
    walk_to(state_db, calrun.id, S.VALIDATING, S.AWAITING_SIGNOFF)
    moved = state_db.calibration_run(calrun.id)
    assert moved.state is S.AWAITING_SIGNOFF
    assert moved.started is not None and moved.finished is not None
    with pytest.raises(StateConflict, match="cannot become COLLECTING"):
        state_db.move(calrun.id, S.COLLECTING)
    assert state_db.request(calrun.request_id).state is RequestState.WAITING


@pytest.mark.unit  # no server: refusals, rules, files
def test_state_rules() -> None:
    for state in ACTIVE:  # iterations and retried flow runs walk the active states freely
        assert allowed_moves(state) >= ACTIVE
    assert S.APPROVED in allowed_moves(S.VALIDATING)  # automatic sign-off
    assert allowed_moves(S.AWAITING_SIGNOFF) == {S.APPROVED, S.REJECTED, S.CANCELLED, S.SKIPPED}
    assert allowed_moves(S.SKIPPED) == {S.PLANNED}
    assert allowed_moves(S.UPLOADED) == {S.PLANNED}  # in the staging tag: rerun, not skip
    assert S.SKIPPED in allowed_moves(S.PLANNED) and S.SKIPPED not in allowed_moves(S.COLLECTING)
    check_move("x", S.REJECTED, S.PLANNED)  # a rerun
    with pytest.raises(StateConflict):
        check_move("x", S.UPLOADED, S.APPROVED)
    assert request_state([S.UPLOADED, S.SKIPPED]) is RequestState.DONE
    assert request_state([S.UPLOADED, S.AWAITING_SIGNOFF]) is RequestState.WAITING
    assert request_state([S.APPROVED, S.AWAITING_SIGNOFF]) is RequestState.WAITING
    assert request_state([S.REJECTED, S.APPROVED]) is RequestState.WAITING  # blocked upload
    assert request_state([S.APPROVED, S.COLLECTING]) is RequestState.RUNNING
    assert request_state([S.UPLOADED, S.REJECTED]) is RequestState.FAILED
    assert request_state([S.UPLOADED], cancelled=True) is RequestState.CANCELLED
    # a deferred calibration waiting for its dependency's upload, which waits for an expert
    assert request_state([S.AWAITING_SIGNOFF, S.PLANNED], queued=1) is RequestState.WAITING
    assert request_state([S.REJECTED, S.PLANNED], queued=1) is RequestState.WAITING
    assert request_state([S.UPLOADED, S.PLANNED], queued=1) is RequestState.RUNNING  # starting
    assert request_state([S.COLLECTING, S.PLANNED], queued=1) is RequestState.RUNNING


def test_signoff_records_one_decision_and_refuses_a_second(state_db: StateDatabase) -> None:
    (calrun,) = state_db.start_request(make_request(state_db))
    with pytest.raises(StateConflict, match="does not await a sign-off"):
        state_db.signoff(calrun.id, APPROVE, "/CN=Bob", "too early")
    walk_to(state_db, calrun.id, S.COLLECTING, S.ALGORITHM, S.VALIDATING, S.AWAITING_SIGNOFF)
    assert state_db.approval(calrun.id) is None
    signoff = state_db.signoff(calrun.id, APPROVE, "/CN=Bob", "looks right")
    assert state_db.calibration_run(calrun.id).state is S.APPROVED
    assert state_db.approval(calrun.id) == signoff
    with pytest.raises(StateConflict, match=r"/CN=Bob chose approve at"):
        state_db.signoff(calrun.id, REJECT, "/CN=Eve", "no")
    actions = [(a.actor, a.action, a.outcome) for a in reversed(state_db.actions())]
    assert actions[1:] == [
        ("/CN=Bob", "signoff approve", "refused"),  # the early one
        ("/CN=Bob", "signoff approve", "ok"),
        ("/CN=Eve", "signoff reject", "refused"),
    ]
    assert state_db.calibration_run(calrun.id).state is S.APPROVED


def test_two_people_signing_off_at_once_one_wins(state_db: StateDatabase) -> None:
    (calrun,) = state_db.start_request(make_request(state_db))
    walk_to(state_db, calrun.id, S.COLLECTING, S.ALGORITHM, S.VALIDATING, S.AWAITING_SIGNOFF)
    url = state_db.database.url
    results: dict[str, str] = {}
    barrier = threading.Barrier(2)

    def decide(actor: str, decision: SignoffDecision) -> None:
        with StateDatabase(url) as db:
            barrier.wait(timeout=10)
            try:
                db.signoff(calrun.id, decision, actor, "")
                results[actor] = "won"
            except StateConflict:
                results[actor] = "told"

    threads = [
        threading.Thread(target=decide, args=("/CN=A", APPROVE)),
        threading.Thread(target=decide, args=("/CN=B", REJECT)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results.values()) == ["told", "won"]
    (signoff,) = state_db.signoffs(calrun.id)
    winner = next(actor for actor, result in results.items() if result == "won")
    assert signoff.actor == winner


def test_a_rerun_needs_a_new_signoff(state_db: StateDatabase) -> None:
    (calrun,) = state_db.start_request(make_request(state_db))
    walk_to(state_db, calrun.id, S.VALIDATING, S.AWAITING_SIGNOFF)
    state_db.signoff(calrun.id, REJECT, "/CN=Bob", "t0 off in run 5")
    with pytest.raises(StateConflict, match="it has not stopped"):
        state_db.rerun([state_db.start_request(make_request(state_db))[0].id], "/CN=Bob")
    (rerun,) = state_db.rerun([calrun.id], "/CN=Bob")
    assert (rerun.state, rerun.attempt) == (S.PLANNED, 2)
    walk_to(state_db, calrun.id, S.VALIDATING, S.AWAITING_SIGNOFF)
    assert state_db.approval(calrun.id) is None  # the old decision was for attempt 1
    state_db.signoff(calrun.id, APPROVE, "/CN=Bob", "fixed")
    assert [s.attempt for s in state_db.signoffs(calrun.id)] == [1, 2]


def test_an_action_on_an_attempt_that_was_rerun_since_is_refused_under_the_lock(
    state_db: StateDatabase,
) -> None:
    (calrun,) = state_db.start_request(make_request(state_db))
    walk_to(state_db, calrun.id, S.VALIDATING, S.AWAITING_SIGNOFF)
    state_db.signoff(calrun.id, REJECT, "/CN=Bob", "t0 off", attempt=1)
    state_db.rerun([calrun.id], "/CN=Bob", attempt=1)  # now attempt 2, PLANNED
    stale = "shown at attempt 1 and is now attempt 2: look at it again"
    with pytest.raises(StateConflict, match=stale):
        state_db.skip(calrun.id, "/CN=Coord", "from an old page", [], attempt=1)
    walk_to(state_db, calrun.id, S.VALIDATING, S.AWAITING_SIGNOFF)
    with pytest.raises(StateConflict, match=stale):
        state_db.signoff(calrun.id, APPROVE, "/CN=Bob", "from an old page", attempt=1)
    state_db.signoff(calrun.id, REJECT, "/CN=Bob", "still off", attempt=2)
    with pytest.raises(StateConflict, match=stale):
        state_db.rerun([calrun.id], "/CN=Bob", attempt=1)
    after = state_db.calibration_run(calrun.id)
    assert (after.state, after.attempt) == (S.REJECTED, 2)  # nothing changed
    assert [s.attempt for s in state_db.signoffs(calrun.id)] == [1, 2]


def test_cancelling_a_request_cancels_what_is_unfinished(state_db: StateDatabase) -> None:
    request = make_request(state_db, ("ChannelT0", "ModuleAlignment"))
    t0, alignment = state_db.start_request(request)
    walk_to(state_db, t0.id, S.VALIDATING, S.APPROVED, S.UPLOADED)
    walk_to(state_db, alignment.id, S.COLLECTING)
    cancelled = state_db.cancel_request(request, "/CN=Coordinator")
    assert [c.calibration for c in cancelled] == ["ModuleAlignment"]
    assert state_db.calibration_run(t0.id).state is S.UPLOADED
    assert state_db.request(request).state is RequestState.CANCELLED
    with pytest.raises(StateConflict, match="is CANCELLED"):
        state_db.cancel_request(request, "/CN=Coordinator")
    with pytest.raises(StateConflict):
        state_db.start_request(request)


def test_a_done_request_is_done(state_db: StateDatabase) -> None:
    request = make_request(state_db, ("ChannelT0", "BeamSpot"))
    t0, beamspot = state_db.start_request(request)
    walk_to(state_db, t0.id, S.VALIDATING, S.APPROVED, S.UPLOADED)
    walk_to(state_db, beamspot.id, S.FAILED)
    assert state_db.request(request).state is RequestState.FAILED
    walk_to(state_db, beamspot.id, S.SKIPPED)
    assert state_db.request(request).state is RequestState.DONE


@pytest.mark.unit  # no server: refusals, rules, files
def test_a_missing_sqlite_file_is_not_created_for_reading(tmp_path: Path) -> None:
    from b2cal.errors import DatabaseError

    with pytest.raises(DatabaseError, match="does not exist"):
        StateDatabase(f"sqlite:///{tmp_path / 'none.sqlite'}", create=False)
    assert not (tmp_path / "none.sqlite").exists()


def test_skipping_reruns_the_stopped_dependants_and_refuses_taken_runs(
    state_db: StateDatabase,
) -> None:
    request = make_request(state_db, ("ChannelT0", "ChannelGain", "ModuleAlignment"))
    t0, gain, alignment = state_db.start_request(request)
    walk_to(state_db, t0.id, S.COLLECTING)
    with pytest.raises(StateConflict, match="a flow run works on it"):
        state_db.skip(t0.id, "/CN=Coord", "bad data", ["ChannelGain"])
    walk_to(state_db, t0.id, S.FAILED)
    walk_to(state_db, gain.id, S.FAILED)  # "not run: ChannelT0 ended FAILED"
    walk_to(state_db, alignment.id, S.COLLECTING)  # not a dependant: it may run on
    skipped, again = state_db.skip(t0.id, "/CN=Coord", "no t0 this bucket", ["ChannelGain"])
    assert (
        skipped.state is S.SKIPPED and skipped.message == "skipped by /CN=Coord: no t0 this bucket"
    )
    assert (again.calibration, again.state, again.attempt) == ("ChannelGain", S.PLANNED, 2)
    assert again.started is None and again.flow_run_id is None
    with pytest.raises(StateConflict, match="is SKIPPED"):
        state_db.skip(t0.id, "/CN=Coord", "again", [])
    actions = [(a.action, a.target, a.outcome) for a in reversed(state_db.actions())]
    assert ("skip", f"calibration run {t0.id}", "refused") in actions
    assert ("skip", f"calibration run {t0.id}", "ok") in actions
    assert ("rerun", f"calibration run {gain.id}", "ok") in actions
    # a dependant still running refuses the skip of what it depends on
    other = make_request(state_db, ("ChannelT0", "ChannelGain"))
    t0b, gainb = state_db.start_request(other)
    walk_to(state_db, t0b.id, S.VALIDATING, S.AWAITING_SIGNOFF)
    walk_to(state_db, gainb.id, S.COLLECTING)
    with pytest.raises(StateConflict, match="its dependants ChannelGain are running"):
        state_db.skip(t0b.id, "/CN=Coord", "x", ["ChannelGain"])
    assert state_db.calibration_run(t0b.id).state is S.AWAITING_SIGNOFF  # nothing changed


def test_a_run_no_flow_run_has_taken_is_claimed_once_and_may_be_skipped(
    state_db: StateDatabase,
) -> None:
    request = state_db.create_request(
        kind=RequestKind.PROMPT, site="bnl", exp=1, run_low=1, run_high=8,
        calibrations=["ChannelT0", "ModuleAlignment"],
        placement={"ModuleAlignment": "desy", "ChannelT0": "bnl"},
    )  # fmt: skip
    assert request.placement == {"ModuleAlignment": "desy"}  # the request's site is implied
    assert request.site_of("ModuleAlignment") == "desy" and request.site_of("ChannelT0") == "bnl"
    t0, alignment = state_db.start_request(request.id)
    assert state_db.claim_start(alignment.id, "starting")
    assert not state_db.claim_start(alignment.id, "starting")  # the second caller is told
    state_db.set_flow_run(alignment.id, "f-1", "started at desy")
    assert state_db.calibration_run(alignment.id).flow_run_id == "f-1"
    with pytest.raises(StateConflict, match="a flow run works on it"):
        state_db.skip(alignment.id, "/CN=Coord", "taken", [])
    (skipped,) = state_db.skip(t0.id, "/CN=Coord", "not this time", [])  # never taken
    assert skipped.state is S.SKIPPED
    assert not state_db.claim_start(t0.id, "starting")
