"""Crash healing's rules (b2cal.requests.healing), without Prefect: which flow runs b2cal
watches, what a crash, a lost process, a cancellation or an early end leads to, the backoff
and the limit of automatic retries, and what each leaves in the state database."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from calibration_runs import started_request

from b2cal.core.processes import ProcessRecord
from b2cal.db.database import StateDatabase
from b2cal.db.states import CalRunState, RequestState
from b2cal.requests.healing import (
    HEALER,
    RETRY_ACTION,
    Decision,
    FlowRunView,
    Verdict,
    Watched,
    decide,
    record,
    retries_made,
    watched_runs,
)
from b2cal.sites import RequestKind

pytestmark = pytest.mark.unit
S = CalRunState
NOW = datetime(2026, 12, 7, 3, 0, tzinfo=UTC)
WATCHED = Watched(7, "run-7", (1, 2), "process-request of request 7")


@pytest.fixture
def db(tmp_path: Path) -> Iterator[StateDatabase]:
    with StateDatabase(f"sqlite:///{tmp_path / 'state.sqlite'}") as opened:
        yield opened


def judged(
    state: str,
    *,
    made: int = 0,
    retries: int = 2,
    ago: float = 60.0,
    process: ProcessRecord | None = None,
) -> Decision:
    since = NOW - timedelta(seconds=ago)
    return decide(
        WATCHED, FlowRunView("run-7", state, "exit -9", since), retries_made=made,
        crash_retries=retries, backoff_seconds=10, now=NOW, process=process, host="node1",
        alive=lambda record: record.pid == 42,
    )  # fmt: skip


def test_a_crash_is_retried_after_its_backoff_until_the_retries_are_used_up() -> None:
    first = judged("CRASHED", ago=11)
    assert (first.verdict, first.retry) == (Verdict.RETRY, 1)
    assert first.line == "process-request of request 7 crashed (exit -9); automatic retry 1 of 2"
    pending = judged("CRASHED", made=1, ago=11)  # the second waits 20 s
    assert (pending.verdict, pending.retry) == (Verdict.RETRY_PENDING, 2)
    assert pending.due == NOW + timedelta(seconds=9)
    assert pending.line.endswith("automatic retry 2 of 2 at 03:00:09 UTC")
    assert judged("CRASHED", made=1, ago=20).verdict is Verdict.RETRY
    spent = judged("CRASHED", made=2)
    assert spent.verdict is Verdict.GIVE_UP
    assert spent.line == "process-request of request 7 crashed (exit -9); 2 automatic retries made"
    assert judged("CRASHED", retries=0).line.endswith("crash_retries = 0")


def test_what_runs_or_waits_is_left_alone_and_a_lost_process_here_is_marked_crashed() -> None:
    for state in ("SCHEDULED", "PENDING", "CANCELLING", "PAUSED"):  # no record, or no process
        assert judged(state).verdict is Verdict.NOTHING, state
    assert judged("RUNNING").verdict is Verdict.NOTHING  # no record of its process
    here = ProcessRecord(host="node1", pid=42)
    assert judged("RUNNING", process=here).verdict is Verdict.NOTHING
    elsewhere = ProcessRecord(host="node2", pid=43)
    assert judged("RUNNING", process=elsewhere).verdict is Verdict.NOTHING  # not ours to see
    lost = judged("RUNNING", process=ProcessRecord(host="node1", pid=43))
    assert (lost.verdict, lost.line) == (
        Verdict.MARK_CRASHED, "its process 43 on node1 is gone (seen by b2cal)")  # fmt: skip
    # launched by the worker, its supervisor died before the engine ran (or could report)
    launched = ProcessRecord(host="node1", pid=43, recorded=NOW - timedelta(seconds=30))
    assert judged("PENDING", process=launched).verdict is Verdict.MARK_CRASHED
    # a record older than the run's state is an earlier attempt's: it says nothing of this one
    stale = ProcessRecord(host="node1", pid=43, recorded=NOW - timedelta(seconds=90))
    for state in ("PENDING", "RUNNING"):
        assert judged(state, process=stale).verdict is Verdict.NOTHING, state
    assert judged("CANCELLED").verdict is Verdict.CANCEL
    for state in ("COMPLETED", "FAILED"):
        ended = judged(state)
        assert ended.verdict is Verdict.ORPHANED
        assert ended.line == f"process-request of request 7 ended {state} before it: exit -9"
    nothing_active = Watched(7, "run-7", (), "process-request of request 7")
    view = FlowRunView("run-7", "CRASHED", "", NOW)
    assert decide(nothing_active, view, retries_made=0, crash_retries=2, backoff_seconds=0,
                  now=NOW).verdict is Verdict.NOTHING  # fmt: skip
    assert decide(WATCHED, None, retries_made=0, crash_retries=2, backoff_seconds=0,
                  now=NOW).verdict is Verdict.NOTHING  # fmt: skip


def test_the_watched_runs_are_the_running_requests_own_and_deferred_ones(
    db: StateDatabase,
) -> None:
    runs = started_request(db, ("ChannelT0", "ChannelGain", "BeamSpot"), through=(S.COLLECTING,))
    request_id = db.calibration_run(runs["ChannelT0"]).request_id
    assert watched_runs(db, "local") == []  # no flow run recorded yet
    db.set_request_flow_run(request_id, "run-1")
    db.move(runs["BeamSpot"], S.ALGORITHM)
    db.move(runs["BeamSpot"], S.NOT_ENOUGH_DATA)
    (watched,) = watched_runs(db, "local")
    assert watched == Watched(request_id, "run-1", (runs["ChannelT0"], runs["ChannelGain"]),
                              f"the flow run of request {request_id}")  # fmt: skip
    assert watched_runs(db, "bnl") == []
    # a deferred calibration placed at another site is watched there, with its own run
    placed = db.create_request(
        kind=RequestKind.PROMPT, site="local", exp=1, run_low=1, run_high=4,
        calibrations=("BeamSpot",), input_tags=["base"], actor="test",
        placement={"BeamSpot": "bnl"},
    )  # fmt: skip
    (spot,) = db.start_request(placed.id)
    db.set_request_flow_run(placed.id, "run-2")
    assert db.claim_start(spot.id, "starting")
    db.set_flow_run(spot.id, "run-3")
    db.move(spot.id, S.COLLECTING)
    assert [w.flow_run_id for w in watched_runs(db, "bnl")] == ["run-3"]
    assert sorted(w.calibration_runs for w in watched_runs(db, "local")) == [
        (), (runs["ChannelT0"], runs["ChannelGain"])]  # fmt: skip


def test_each_decision_leaves_its_record(db: StateDatabase) -> None:
    runs = started_request(db, ("ChannelT0", "ChannelGain"), through=(S.COLLECTING,))
    request_id = db.calibration_run(runs["ChannelT0"]).request_id
    watched = Watched(request_id, "run-1", tuple(runs.values()), "process-request")
    record(db, Decision(Verdict.RETRY_PENDING, watched, "crashed; automatic retry 1 of 2 at x"))
    assert db.request(request_id).message == "crashed; automatic retry 1 of 2 at x"
    assert db.request(request_id).state is RequestState.RUNNING  # request wait keeps waiting
    assert retries_made(db, request_id, "run-1") == 0
    record(db, Decision(Verdict.RETRY, watched, "crashed; automatic retry 1 of 2", retry=1))
    assert retries_made(db, request_id, "run-1") == 1
    assert retries_made(db, request_id, "run-0") == 0  # another flow run's retries
    (action,) = [a for a in db.actions(target=f"request {request_id}") if a.action == RETRY_ACTION]
    assert (action.actor, action.detail["retry"]) == (HEALER, 1)
    assert {db.calibration_run(i).state for i in runs.values()} == {S.COLLECTING}
    db.move(runs["ChannelGain"], S.ALGORITHM)
    db.move(runs["ChannelGain"], S.VALIDATING)
    record(db, Decision(Verdict.GIVE_UP, watched, "crashed; 2 automatic retries made", retry=2))
    t0, gain = db.calibration_run(runs["ChannelT0"]), db.calibration_run(runs["ChannelGain"])
    assert (t0.state, t0.message) == (S.FAILED, "crashed; 2 automatic retries made")
    assert gain.state is S.FAILED
    assert db.request(request_id).state is RequestState.FAILED


def test_a_pending_request_whose_run_crashed_before_planning_is_healed(
    db: StateDatabase,
) -> None:
    """A run that made its request (calibration-request) and crashed before it planned: no
    calibration run exists yet, and the crash is retried, or the request FAILED at the end."""
    made = db.create_request(
        kind=RequestKind.RECALIBRATION, site="local", exp=1, run_low=1, run_high=4,
        calibrations=("ChannelT0",), actor="test", flow_run_id="run-9",
    )  # fmt: skip
    (watched,) = watched_runs(db, "local")
    assert (watched.flow_run_id, watched.calibration_runs, watched.pending) == ("run-9", (), True)
    assert db.request_of_flow_run("run-9") == db.request(made.id)
    crashed = FlowRunView("run-9", "CRASHED", "exit -9", NOW)
    retry = decide(watched, crashed, retries_made=0, crash_retries=2, backoff_seconds=0, now=NOW)
    assert retry.verdict is Verdict.RETRY
    spent = decide(watched, crashed, retries_made=2, crash_retries=2, backoff_seconds=0, now=NOW)
    record(db, spent)
    assert db.request(made.id).state is RequestState.FAILED
    assert "crashed (exit -9); 2 automatic retries made" in (db.request(made.id).message or "")


def test_a_run_cancelled_in_prefect_cancels_its_request(db: StateDatabase) -> None:
    runs = started_request(db, ("ChannelT0",), through=(S.COLLECTING,))
    request_id = db.calibration_run(runs["ChannelT0"]).request_id
    watched = Watched(request_id, "run-1", tuple(runs.values()), "process-request")
    record(db, Decision(Verdict.CANCEL, watched, "prefect (flow run cancelled)"))
    assert db.request(request_id).state is RequestState.CANCELLED
    assert db.calibration_run(runs["ChannelT0"]).state is S.CANCELLED
    record(db, Decision(Verdict.CANCEL, watched, "prefect (flow run cancelled)"))  # once only


def test_a_flow_run_process_records_where_it_runs_and_is_seen_alive_or_gone(
    tmp_path: Path,
) -> None:
    import subprocess
    import sys

    from b2cal.processing.area import RequestArea
    from b2cal.requests.healing import record_process, recorded_process

    area = RequestArea(tmp_path / "requests" / "3")
    assert recorded_process(area, "run-1") is None
    record_process(area, "run-1")
    mine = recorded_process(area, "run-1")
    assert mine is not None and mine.alive() and mine.started is not None
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not ProcessRecord(host=mine.host, pid=child.pid).alive()  # gone
    assert not mine.model_copy(update={"started": "1"}).alive()  # the PID reused by another


def test_request_wait_exits_1_naming_the_crash_only_once_the_retries_are_used_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cli import b2cal_inline

    from b2cal.sites import load_site

    env = {"B2CAL_HOME": str(tmp_path / "home")}
    monkeypatch.setenv("B2CAL_HOME", env["B2CAL_HOME"])
    with StateDatabase(load_site("local").state_database_url) as db:
        healed = started_request(db, ("ChannelT0",), through=(S.COLLECTING,))
        lost = started_request(db, ("ChannelT0",), through=(S.COLLECTING,))
        ids = [db.calibration_run(c["ChannelT0"]).request_id for c in (healed, lost)]
        for request_id, calruns in zip(ids, (healed, lost), strict=True):
            watched = Watched(request_id, "run-1", tuple(calruns.values()), "process-request")
            record(db, Decision(Verdict.RETRY, watched, "crashed; automatic retry 1 of 1", 1))
        for state in (S.ALGORITHM, S.VALIDATING, S.APPROVED, S.UPLOADED):
            db.move(healed["ChannelT0"], state)
        db.finish_request(ids[0])
        watched = Watched(ids[1], "run-1", tuple(lost.values()), "process-request")
        line = "process-request crashed (exit -9); 1 automatic retries made"
        record(db, Decision(Verdict.GIVE_UP, watched, line, retry=1))

    done = b2cal_inline("request", "wait", str(ids[0]), "--timeout", "5", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "automatic retries after a crash: 1" in done.stdout
    failed = b2cal_inline("request", "wait", str(ids[1]), "--timeout", "5", env=env)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "automatic retries after a crash: 1" in failed.stdout
    (said,) = failed.stderr.strip().splitlines()
    assert said.startswith(f"error: request {ids[1]} (") and said.endswith(
        f"crashed and was not healed: {line}"
    ), said
    with StateDatabase(load_site("local").state_database_url) as db:  # a person reruns it...
        db.rerun([lost["ChannelT0"]], "/CN=Ada")
        db.move(lost["ChannelT0"], S.FAILED, message="ChannelT0: the algorithm said FAILURE")
    again = b2cal_inline("request", "wait", str(ids[1]), "--timeout", "5", env=env)
    assert again.returncode == 2, again.stdout + again.stderr  # ...and it fails: not a crash
