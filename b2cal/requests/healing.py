"""Crashes seen and healed: what b2cal does when the flow run that computes a request's
calibrations is gone while they are still active in the state database.

A flow run's process can die without a word (``kill -9``, an out-of-memory kill, a node
lost): no hook of its own runs, and Prefect marks it Crashed only when its worker sees the
process exit, or — worker gone too — when its heartbeats stop (b2cal's automation). The
reconciler (:mod:`b2cal.requests.reconciler`) compares, every period, Prefect's word on each
*watched* flow run with b2cal's records and asks :func:`decide` what to do; :func:`record`
writes the b2cal side of the answer. These rules are pure, and tested without Prefect.

A watched flow run is the top-level run that computes calibration runs: a request's
``process-request`` run (its in-process calibrations) or a deferred calibration's own
``calibrate`` deployment run. Subflows are never retried on their own (Prefect reruns them
from their parent), and a subflow left from an earlier attempt is not watched: only the
current attempt's crash counts.
"""

from __future__ import annotations

import contextlib
import enum
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from b2cal.core.processes import ProcessRecord
from b2cal.db.database import SYSTEM, StateDatabase
from b2cal.db.states import ACTIVE, CalRunState, RequestState
from b2cal.errors import B2CalError, StateConflict
from b2cal.orchestrator import launcher
from b2cal.processing.area import RequestArea
from b2cal.processing.placement import in_process
from b2cal.processing.preparation import calibrations_of
from b2cal.requests.deferred import STARTING

#: Who retries and gives up in the action log.
HEALER = f"{SYSTEM} (crash healing)"
#: The action-log entry of an automatic retry.
RETRY_ACTION = "request retry"
GIVE_UP_ACTION = "request crashed"


@dataclass(frozen=True)
class FlowRunView:
    """What Prefect says of a flow run: its state (a Prefect state type, ``"CRASHED"``...), and
    the state's message and time."""

    id: str
    state: str
    message: str
    since: datetime


def record_process(area: RequestArea, flow_run_id: str) -> None:
    """The flow run's process records itself (called where a top-level flow run begins):
    Prefect keeps a bare PID, without the host; a reconciler on this host can see it die."""
    ProcessRecord.of(os.getpid()).write(area.process_record(flow_run_id))


def recorded_process(area: RequestArea, flow_run_id: str) -> ProcessRecord | None:
    """The flow run's own process (the engine), as it recorded itself."""
    return ProcessRecord.read(area.process_record(flow_run_id))


def launched_process(flow_run_id: str) -> ProcessRecord | None:
    """The flow run's supervisor, as b2cal's launcher recorded it when the worker started the
    run (:mod:`b2cal.orchestrator.launcher`): what there is before the engine runs, and what
    is left when the engine never started."""
    return ProcessRecord.read(launcher.record_path(flow_run_id))


@dataclass(frozen=True)
class Watched:
    """A flow run b2cal expects to be computing: the request, the flow run's id, and the
    calibration runs it computes that are still active."""

    request_id: int
    flow_run_id: str
    calibration_runs: tuple[int, ...]
    #: What the flow run is, in one phrase ("process-request of request 3").
    label: str
    #: The request is PENDING: its run has planned nothing yet, so it has no calibration
    #: runs, and it is judged all the same.
    pending: bool = False


class Verdict(enum.StrEnum):
    #: Nothing to do: it runs, or it has not started, or nothing of it is active.
    NOTHING = "nothing"
    #: Its process is gone on this host but Prefect still says Running: mark it Crashed.
    MARK_CRASHED = "mark crashed"
    #: Crashed; a retry is due later (the backoff): say so.
    RETRY_PENDING = "retry pending"
    #: Crashed; retry it now.
    RETRY = "retry"
    #: Crashed, and no retry left: its calibration runs are FAILED.
    GIVE_UP = "give up"
    #: Cancelled outside b2cal (the Prefect UI or CLI): the request is cancelled.
    CANCEL = "cancel"
    #: Ended (Completed or Failed) with calibration runs still active: they are FAILED.
    ORPHANED = "orphaned"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    watched: Watched
    #: The line b2cal records (a request's message, a calibration run's, a state's).
    line: str = ""
    #: The retry's number (RETRY, RETRY_PENDING) or how many were made (GIVE_UP).
    retry: int = 0
    due: datetime | None = None


#: Prefect state types of a flow run that has ended.
ENDED = frozenset({"COMPLETED", "FAILED", "CANCELLED", "CRASHED"})


def decide(
    watched: Watched,
    run: FlowRunView | None,
    *,
    retries_made: int,
    crash_retries: int,
    backoff_seconds: float,
    now: datetime,
    process: ProcessRecord | None = None,
    host: str = "",
    alive: Callable[[ProcessRecord], bool] = ProcessRecord.alive,
) -> Decision:
    """What to do with a watched flow run, from Prefect's view of it (None: Prefect does not
    know it), the automatic retries made for it so far, and where its process runs (judged
    only on the reconciler's own ``host``)."""
    if run is None or not (watched.calibration_runs or watched.pending):
        return Decision(Verdict.NOTHING, watched)
    if run.state in ("RUNNING", "PENDING"):  # pending: the worker has launched it
        current = process is not None and (
            process.recorded is None or process.recorded >= run.since
        )
        if current and process is not None and process.host == host and not alive(process):
            line = f"its process {process.pid} on {host} is gone (seen by b2cal)"
            return Decision(Verdict.MARK_CRASHED, watched, line)
        return Decision(Verdict.NOTHING, watched)
    if run.state == "CANCELLED":
        return Decision(Verdict.CANCEL, watched, "prefect (flow run cancelled)")
    if run.state in ("COMPLETED", "FAILED"):
        line = f"{watched.label} ended {run.state} before it: {run.message or 'no message'}"
        return Decision(Verdict.ORPHANED, watched, line)
    if run.state != "CRASHED":
        return Decision(Verdict.NOTHING, watched)  # scheduled, pending, retried meanwhile
    crash = f"{watched.label} crashed ({run.message or 'no message'})"
    if retries_made >= crash_retries:
        made = f"{retries_made} automatic retries made" if crash_retries else "crash_retries = 0"
        return Decision(Verdict.GIVE_UP, watched, f"{crash}; {made}", retry=retries_made)
    number = retries_made + 1
    due = run.since + timedelta(seconds=backoff_seconds * 2**retries_made)
    if now < due:
        at = due.astimezone(UTC).strftime("%H:%M:%S UTC")
        line = f"{crash}; automatic retry {number} of {crash_retries} at {at}"
        return Decision(Verdict.RETRY_PENDING, watched, line, retry=number, due=due)
    line = f"{crash}; automatic retry {number} of {crash_retries}"
    return Decision(Verdict.RETRY, watched, line, retry=number, due=due)


def watched_runs(db: StateDatabase, site: str) -> list[Watched]:
    """The flow runs of ``site`` that b2cal expects to be computing: each RUNNING request's
    ``process-request`` run (here if the request is this site's), with its in-process
    calibration runs that are active, and each active deferred calibration run placed here
    with its own ``calibrate`` run. A PENDING request with a flow run is watched too: its run
    may crash before it has planned anything (right after a ``calibration-request`` run made
    it, say)."""
    found: list[Watched] = []
    running = [
        request
        for state in (RequestState.PENDING, RequestState.RUNNING)
        for request in db.requests(limit=10_000, state=state)
    ]
    by_request = db.calibration_runs_of([request.id for request in running])
    for request in running:
        runs = {run.calibration: run for run in by_request.get(request.id, [])}
        try:
            own = set(in_process(request, calibrations_of(request)[0], runs))
        except B2CalError:  # its calibrations cannot be configured: it never got far
            own = {name for name in runs if request.site_of(name) == request.site}
        active = [run for run in runs.values() if run.state.active]
        if request.site == site and request.flow_run_id:
            ids = tuple(run.id for run in active if run.calibration in own)
            label = f"the flow run of request {request.id}"
            pending = request.state is RequestState.PENDING
            found.append(Watched(request.id, request.flow_run_id, ids, label, pending))
        for run in active:
            if run.calibration in own or request.site_of(run.calibration) != site:
                continue
            if run.flow_run_id and run.flow_run_id != STARTING:
                label = f"calibrate {run.calibration} of request {request.id}"
                found.append(Watched(request.id, run.flow_run_id, (run.id,), label))
    return found


def retries_made(db: StateDatabase, request_id: int, flow_run_id: str) -> int:
    """The automatic retries of this flow run, from the action log (the one record of them)."""
    target = f"request {request_id}"
    return sum(
        1
        for action in db.actions(limit=1000, target=target)
        if action.action == RETRY_ACTION and action.detail.get("flow_run") == flow_run_id
    )


@dataclass(frozen=True)
class CrashHistory:
    """What crash healing did for a request: the automatic retries it made, and the line it
    gave up with when they were used up (None while it has not given up)."""

    retries: int
    gave_up: str | None


def crash_history(db: StateDatabase, request_id: int) -> CrashHistory:
    """A request's crash history, read from the action log (the one record of it). It gave
    up only while a calibration run still ends with the line it gave up with: one rerun by a
    person since is the request's current story."""
    actions = db.actions(limit=1000, target=f"request {request_id}")
    retries = sum(1 for a in actions if a.action == RETRY_ACTION)
    gave_up = next((a for a in actions if a.action == GIVE_UP_ACTION), None)  # newest first
    reason = str(gave_up.detail.get("reason", "")) if gave_up else None
    if reason is not None:
        failed = {
            c.message for c in db.calibration_runs(request_id) if c.state is CalRunState.FAILED
        }
        reason = reason if reason in failed else None
    return CrashHistory(retries, reason)


def record(db: StateDatabase, decision: Decision) -> None:
    """The b2cal side of a decision (the Prefect side is the reconciler's): the request's
    message while a retry is pending; the action log for a retry made; FAILED calibration
    runs when the flow run will not come back; a cancelled request."""
    watched, line = decision.watched, decision.line
    target = f"request {watched.request_id}"
    verdict = decision.verdict
    if verdict is Verdict.RETRY_PENDING:
        if db.request(watched.request_id).message != line:
            db.finish_request(watched.request_id, line)
    elif verdict is Verdict.RETRY:
        detail = {"flow_run": watched.flow_run_id, "retry": decision.retry, "reason": line}
        db.log_action(HEALER, RETRY_ACTION, target, "ok", detail)
        db.finish_request(watched.request_id, line)
    elif verdict in (Verdict.GIVE_UP, Verdict.ORPHANED):
        if verdict is Verdict.GIVE_UP:  # logged first: whoever sees the request FAILED finds it
            detail = {"flow_run": watched.flow_run_id, "retries": decision.retry, "reason": line}
            db.log_action(HEALER, GIVE_UP_ACTION, target, "failed", detail)
        _fail(db, watched.calibration_runs, line)
        if watched.pending:  # nothing was planned: nothing else says it failed
            with contextlib.suppress(StateConflict):
                db.fail_request(watched.request_id, line)
        else:
            db.finish_request(watched.request_id, line)
    elif verdict is Verdict.CANCEL:
        with contextlib.suppress(StateConflict):  # cancelled or ended already
            db.cancel_request(watched.request_id, line)


def _fail(db: StateDatabase, calrun_ids: Sequence[int], line: str) -> None:
    for calrun_id in calrun_ids:
        try:
            db.move(calrun_id, CalRunState.FAILED, message=line, expected=ACTIVE)
        except StateConflict:
            continue  # it ended meanwhile
