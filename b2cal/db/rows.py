"""Rows inside a transaction of the state database: looked up (and locked), moved by the
calibration-run state model, kept in step with their request, logged; and the plain frozen
values (:mod:`b2cal.db.model`) handed out instead of rows bound to a session."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from b2cal.db.model import Action, CalibrationRun, Request, Signoff
from b2cal.db.schema import (
    ActionRow,
    BucketRow,
    CalibrationRunRow,
    RequestRow,
    SignoffRow,
    now,
    utc,
)
from b2cal.db.states import BucketState, CalRunState, RequestState, SignoffDecision, request_state
from b2cal.errors import UnknownRecord
from b2cal.sites import RequestKind


def taken(row: CalibrationRunRow) -> bool:
    """A flow run works on it (or one is being started for it)."""
    state = CalRunState(row.state)
    return state.active and (row.started is not None or row.flow_run_id is not None)


def new_attempt(session: Session, row: CalibrationRunRow, message: str, actor: str) -> None:
    """The next attempt of a stopped calibration run: PLANNED, untaken, to be signed off anew."""
    row.attempt += 1
    move_row(row, CalRunState.PLANNED, message=message)
    row.started = row.finished = None
    row.result = row.iteration = None
    row.flow_run_id = None
    add_action(session, actor, "rerun", f"calibration run {row.id}", "ok",
               {"attempt": row.attempt})  # fmt: skip


def decided(decision: SignoffDecision) -> CalRunState:
    return CalRunState.APPROVED if decision is SignoffDecision.APPROVE else CalRunState.REJECTED


def calrun_label(row: CalibrationRunRow) -> str:
    return f"calibration run {row.id} ({row.calibration} of request {row.request_id})"


def move_row(
    row: CalibrationRunRow,
    state: CalRunState,
    *,
    message: str | None = None,
    iteration: int | None = None,
    result: str | None = None,
) -> None:
    moment = now()
    if state.active and row.started is None:
        row.started = moment
    if state.ended and not CalRunState(row.state).ended:
        row.finished = moment
    if state.active:
        row.finished = None
    row.state = state.value
    row.updated = moment
    if message is not None:
        row.message = message
    if iteration is not None:
        row.iteration = iteration
    if result is not None:
        row.result = result


def request_row(session: Session, request_id: int, lock: bool = False) -> RequestRow:
    query = select(RequestRow).where(RequestRow.id == request_id)
    row = session.scalar(query.with_for_update() if lock else query)
    if row is None:
        raise UnknownRecord("request", request_id)
    return row


def calrun_row(session: Session, calrun_id: int, lock: bool = False) -> CalibrationRunRow:
    query = select(CalibrationRunRow).where(CalibrationRunRow.id == calrun_id)
    row = session.scalar(query.with_for_update() if lock else query)
    if row is None:
        raise UnknownRecord("calibration run", calrun_id)
    return row


def calrun_rows(session: Session, request_id: int, lock: bool = False) -> list[CalibrationRunRow]:
    query = (
        select(CalibrationRunRow)
        .where(CalibrationRunRow.request_id == request_id)
        .order_by(CalibrationRunRow.id)
    )
    return list(session.scalars(query.with_for_update() if lock else query))


def update_request_state(session: Session, row: RequestRow) -> None:
    if row.state == RequestState.CANCELLED:
        return
    rows = calrun_rows(session, row.id)
    states = [CalRunState(r.state) for r in rows]
    if not states and row.state == RequestState.FAILED:
        return  # its plan failed (fail_request): it has no calibration runs to say otherwise
    queued = sum(1 for r in rows if r.state == CalRunState.PLANNED and not taken(r))
    state = request_state(states, queued=queued)
    if state != row.state:
        row.state = state.value
        row.updated = now()
        if state is RequestState.DONE and row.bucket_id is not None:
            bucket = session.get(BucketRow, row.bucket_id)
            if bucket is not None:
                bucket.state = BucketState.PROCESSED


def add_action(
    session: Session, actor: str, action: str, target: str, outcome: str, detail: dict[str, Any]
) -> Action:
    """Write an entry of the action log inside the caller's transaction."""
    row = ActionRow(
        at=now(), actor=actor, action=action, target=target, outcome=outcome, detail=detail
    )
    session.add(row)
    session.flush()
    return action_value(row)


def summary(row: RequestRow) -> dict[str, Any]:
    return {
        "kind": row.kind,
        "site": row.site,
        "exp": row.exp,
        "runs": [row.run_low, row.run_high],
        "calibrations": list(row.calibrations),
        "input_tags": list(row.input_tags),
        "bucket_id": row.bucket_id,
        **({"placement": dict(row.placement)} if row.placement else {}),
    }


# --- values -----------------------------------------------------------------------------------
def request_value(row: RequestRow) -> Request:
    return Request(
        id=row.id,
        kind=RequestKind(row.kind),
        site=row.site,
        exp=row.exp,
        run_low=row.run_low,
        run_high=row.run_high,
        bucket_id=row.bucket_id,
        calibrations=list(row.calibrations),
        input_tags=list(row.input_tags),
        reference_tag=row.reference_tag,
        staging_tag=row.staging_tag,
        config=dict(row.config),
        open_ended=row.open_ended,
        state=RequestState(row.state),
        created=utc(row.created),
        created_by=row.created_by,
        updated=utc(row.updated),
        flow_run_id=row.flow_run_id,
        message=row.message,
        placement=dict(row.placement or {}),
    )


def calrun_value(row: CalibrationRunRow) -> CalibrationRun:
    return CalibrationRun(
        id=row.id,
        request_id=row.request_id,
        calibration=row.calibration,
        state=CalRunState(row.state),
        attempt=row.attempt,
        iteration=row.iteration,
        result=row.result,
        created=utc(row.created),
        started=utc(row.started) if row.started else None,
        updated=utc(row.updated),
        finished=utc(row.finished) if row.finished else None,
        flow_run_id=row.flow_run_id,
        message=row.message,
        summary=dict(row.summary) if row.summary is not None else None,
    )


def signoff_value(row: SignoffRow) -> Signoff:
    return Signoff(
        id=row.id,
        calibration_run_id=row.calibration_run_id,
        attempt=row.attempt,
        decision=SignoffDecision(row.decision),
        actor=row.actor,
        comment=row.comment,
        at=utc(row.at),
        action_id=row.action_id,
    )


def action_value(row: ActionRow) -> Action:
    return Action(
        id=row.id,
        at=utc(row.at),
        actor=row.actor,
        action=row.action,
        target=row.target,
        outcome=row.outcome,
        detail=dict(row.detail),
    )
