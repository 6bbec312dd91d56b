"""b2cal's state database: requests, calibration runs, sign-offs and the action log.

One class, :class:`StateDatabase`, over the tables of :mod:`b2cal.db.schema`, on SQLite,
PostgreSQL or MariaDB alike (engines and transactions from :mod:`b2cal.sql.engine`). Every change
is one transaction that first locks the row it changes (``SELECT ... FOR UPDATE``; SQLite's
``BEGIN IMMEDIATE``) and then checks the state rules of :mod:`b2cal.db.states` on what it read,
so of two people acting on the same item at once one wins and the other is told
(:class:`~b2cal.errors.StateConflict`), and nothing is half changed. Discovery's part (files,
runs, buckets) is in :mod:`b2cal.db.discovery`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any, TypeVar

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from b2cal.db.model import Action, CalibrationRun, CollectorJob, Request, Signoff
from b2cal.db.schema import (
    LABEL,
    MIGRATIONS,
    ActionRow,
    BucketRow,
    CalibrationRunRow,
    CollectorJobRow,
    RequestRow,
    SignoffRow,
    now,
    utc,
)
from b2cal.db.states import (
    RERUNNABLE,
    SKIPPABLE,
    BucketState,
    CalRunState,
    RequestState,
    SignoffDecision,
    check_move,
    request_state,
)
from b2cal.errors import StateConflict, UnknownRecord
from b2cal.sites import RequestKind
from b2cal.sql.engine import WRITE, SqlDatabase, in_transaction, make_engine
from b2cal.sql.migrations import upgrade_schema

T = TypeVar("T")

#: Who acts when nobody is named: the flows themselves.
SYSTEM = "b2cal"


def staging_tag_name(kind: RequestKind, request_id: int) -> str:
    """The one staging tag of a request (its calibrations upload into it after sign-off)."""
    return f"staging-{kind.value}-{request_id}"


class StateDatabase:
    """Open (and if needed create or upgrade) the state database at ``url``."""

    def __init__(self, url: str, create: bool = True) -> None:
        self.database = SqlDatabase(url, LABEL)
        self.engine: Engine = make_engine(self.database, create=create)
        self._writer = self.engine.execution_options(**{WRITE: True})
        try:
            upgrade_schema(self.engine, MIGRATIONS, self.database)
        except BaseException:
            self.engine.dispose()
            raise

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> StateDatabase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, work: Callable[[Session], T]) -> T:
        return in_transaction(self.engine, self.database, work)

    def write(self, work: Callable[[Session], T]) -> T:
        return in_transaction(self._writer, self.database, work)

    # --- the action log -------------------------------------------------------------------
    def log_action(
        self,
        actor: str,
        action: str,
        target: str,
        outcome: str = "ok",
        detail: dict[str, Any] | None = None,
    ) -> Action:
        """Record an action and its outcome (refusals too: ``outcome="refused"``)."""
        return self.write(lambda s: add_action(s, actor, action, target, outcome, detail or {}))

    def actions(self, limit: int = 100, target: str | None = None) -> list[Action]:
        def work(session: Session) -> list[Action]:
            query = select(ActionRow).order_by(ActionRow.id.desc()).limit(limit)
            if target is not None:
                query = query.where(ActionRow.target == target)
            return [_action_value(row) for row in session.scalars(query)]

        return self.read(work)

    # --- requests -------------------------------------------------------------------------
    def create_request(
        self,
        *,
        kind: RequestKind,
        site: str,
        exp: int,
        run_low: int,
        run_high: int,
        calibrations: Sequence[str],
        input_tags: Sequence[str] = (),
        reference_tag: str | None = None,
        config: dict[str, Any] | None = None,
        open_ended: bool = False,
        bucket_id: int | None = None,
        placement: dict[str, str] | None = None,
        actor: str = SYSTEM,
    ) -> Request:
        """A new request (PENDING); a bucket's request moves the bucket to PROCESSING."""

        def work(session: Session) -> Request:
            if bucket_id is not None:
                bucket = session.scalar(
                    select(BucketRow).where(BucketRow.id == bucket_id).with_for_update()
                )
                if bucket is None:
                    raise UnknownRecord("bucket", bucket_id)
                label = f"bucket {bucket.number} of experiment {bucket.exp}"
                if bucket.state != BucketState.CLOSED:
                    note = {
                        BucketState.OPEN: "close it first (b2cal bucket close)",
                        BucketState.PROCESSING: "a request is processing it already",
                        BucketState.PROCESSED: "it has been processed",
                    }[BucketState(bucket.state)]
                    raise StateConflict(label, bucket.state, BucketState.PROCESSING, note)
                bucket.state = BucketState.PROCESSING
            moment = now()
            row = RequestRow(
                kind=kind.value,
                site=site,
                exp=exp,
                run_low=run_low,
                run_high=run_high,
                bucket_id=bucket_id,
                calibrations=list(calibrations),
                input_tags=list(input_tags),
                reference_tag=reference_tag,
                staging_tag="",
                config=config or {},
                open_ended=open_ended,
                placement={k: v for k, v in (placement or {}).items() if v != site},
                state=RequestState.PENDING,
                created=moment,
                created_by=actor,
                updated=moment,
            )
            session.add(row)
            session.flush()
            row.staging_tag = staging_tag_name(kind, row.id)
            add_action(session, actor, "request create", f"request {row.id}", "ok", _summary(row))
            return _request_value(row)

        return self.write(work)

    def request(self, request_id: int) -> Request:
        return self.read(lambda s: _request_value(_request_row(s, request_id)))

    def requests(self, limit: int = 50, state: RequestState | None = None) -> list[Request]:
        def work(session: Session) -> list[Request]:
            query = select(RequestRow).order_by(RequestRow.id.desc()).limit(limit)
            if state is not None:
                query = query.where(RequestRow.state == state.value)
            return [_request_value(row) for row in session.scalars(query)]

        return self.read(work)

    def bucket_requests(self, bucket_id: int) -> list[Request]:
        """Every request made for a bucket, oldest first (cancelled ones included)."""

        def work(session: Session) -> list[Request]:
            query = select(RequestRow).where(RequestRow.bucket_id == bucket_id)
            return [_request_value(row) for row in session.scalars(query.order_by(RequestRow.id))]

        return self.read(work)

    def set_request_flow_run(self, request_id: int, flow_run_id: str) -> None:
        def work(session: Session) -> None:
            row = _request_row(session, request_id, lock=True)
            row.flow_run_id = flow_run_id
            row.updated = now()

        self.write(work)

    def start_request(self, request_id: int) -> list[CalibrationRun]:
        """The request's calibration runs, created PLANNED the first time (idempotent)."""

        def work(session: Session) -> list[CalibrationRun]:
            row = _request_row(session, request_id, lock=True)
            if row.state == RequestState.CANCELLED:
                raise StateConflict(f"request {request_id}", row.state, RequestState.RUNNING)
            existing = {
                r.calibration: r
                for r in session.scalars(
                    select(CalibrationRunRow).where(CalibrationRunRow.request_id == request_id)
                )
            }
            moment = now()
            for name in row.calibrations:
                if name not in existing:
                    existing[name] = CalibrationRunRow(
                        request_id=request_id,
                        calibration=name,
                        state=CalRunState.PLANNED,
                        attempt=1,
                        created=moment,
                        updated=moment,
                    )
                    session.add(existing[name])
            session.flush()
            row.message = None  # e.g. "waiting for a worker": it has started now
            _update_request_state(session, row)
            return [_calrun_value(existing[name]) for name in row.calibrations]

        return self.write(work)

    def finish_request(self, request_id: int, message: str | None = None) -> Request:
        """Bring the request's state up to date with its calibration runs; a DONE request's
        bucket becomes PROCESSED."""

        def work(session: Session) -> Request:
            row = _request_row(session, request_id, lock=True)
            if message is not None:
                row.message = message
            _update_request_state(session, row)
            return _request_value(row)

        return self.write(work)

    def fail_request(self, request_id: int, message: str) -> Request:
        """The request could not be started (its plan failed): FAILED, saying why. A retried
        flow run that gets further moves it on."""

        def work(session: Session) -> Request:
            row = _request_row(session, request_id, lock=True)
            if row.state == RequestState.CANCELLED:
                raise StateConflict(f"request {request_id}", row.state, RequestState.FAILED)
            row.state, row.message, row.updated = RequestState.FAILED.value, message, now()
            return _request_value(row)

        return self.write(work)

    def cancel_request(self, request_id: int, actor: str) -> list[CalibrationRun]:
        """Mark the request and its unfinished calibration runs CANCELLED (the caller stops
        the flow runs); returns the calibration runs that were cancelled."""

        def work(session: Session) -> list[CalibrationRun]:
            row = _request_row(session, request_id, lock=True)
            if row.state in (RequestState.DONE, RequestState.CANCELLED):
                raise StateConflict(f"request {request_id}", row.state, RequestState.CANCELLED)
            cancelled = []
            for calrun in _calrun_rows(session, request_id, lock=True):
                state = CalRunState(calrun.state)
                if state.active or state in (CalRunState.AWAITING_SIGNOFF, CalRunState.APPROVED):
                    _move(calrun, CalRunState.CANCELLED, message=f"request cancelled by {actor}")
                    cancelled.append(_calrun_value(calrun))
            row.state = RequestState.CANCELLED
            row.updated = now()
            if row.bucket_id is not None:
                bucket = session.get(BucketRow, row.bucket_id, with_for_update=True)
                if bucket is not None and bucket.state == BucketState.PROCESSING:
                    bucket.state = BucketState.CLOSED  # a new request may process it again
            add_action(session, actor, "request cancel", f"request {request_id}", "ok", {})
            return cancelled

        return self.write(work)

    # --- calibration runs -----------------------------------------------------------------
    def calibration_runs(self, request_id: int | None = None) -> list[CalibrationRun]:
        def work(session: Session) -> list[CalibrationRun]:
            query = select(CalibrationRunRow).order_by(CalibrationRunRow.id)
            if request_id is not None:
                query = query.where(CalibrationRunRow.request_id == request_id)
            return [_calrun_value(row) for row in session.scalars(query)]

        return self.read(work)

    def calibration_run(self, calrun_id: int) -> CalibrationRun:
        return self.read(lambda s: _calrun_value(_calrun_row(s, calrun_id)))

    def calibration_run_of(self, request_id: int, calibration: str) -> CalibrationRun:
        def work(session: Session) -> CalibrationRun:
            row = session.scalar(
                select(CalibrationRunRow).where(
                    CalibrationRunRow.request_id == request_id,
                    CalibrationRunRow.calibration == calibration,
                )
            )
            if row is None:
                raise UnknownRecord("calibration run", f"{calibration} of request {request_id}")
            return _calrun_value(row)

        return self.read(work)

    def move(
        self,
        calrun_id: int,
        state: CalRunState,
        *,
        message: str | None = None,
        iteration: int | None = None,
        result: str | None = None,
        flow_run_id: str | None = None,
        summary: dict[str, Any] | None = None,
        expected: frozenset[CalRunState] | None = None,
    ) -> CalibrationRun:
        """Move a calibration run to ``state`` if the state model allows it from where it is
        (and, with ``expected``, only from one of those states: what the caller saw before).

        Moving to the state it is in only updates the other fields (a retried flow run says
        COLLECTING again).
        """

        def work(session: Session) -> CalibrationRun:
            row = _calrun_row(session, calrun_id, lock=True)
            if expected is not None and CalRunState(row.state) not in expected:
                raise StateConflict(_calrun_label(row), row.state, state, "it has moved on")
            if row.state != state:
                check_move(_calrun_label(row), CalRunState(row.state), state)
            _move(row, state, message=message, iteration=iteration, result=result)
            if flow_run_id is not None:
                row.flow_run_id = flow_run_id
            if summary is not None:
                row.summary = summary
            request = _request_row(session, row.request_id, lock=True)
            _update_request_state(session, request)
            return _calrun_value(row)

        return self.write(work)

    def rerun(self, calrun_ids: Sequence[int], actor: str) -> list[CalibrationRun]:
        """Start stopped calibration runs of one request again (PLANNED, next attempt: a new
        attempt needs a new sign-off), all or none."""

        def work(session: Session) -> list[CalibrationRun]:
            rows = [_calrun_row(session, calrun_id, lock=True) for calrun_id in calrun_ids]
            for row in rows:
                current = CalRunState(row.state)
                if current not in RERUNNABLE:
                    raise StateConflict(
                        _calrun_label(row), current, CalRunState.PLANNED, "it has not stopped"
                    )
            requests = {row.request_id for row in rows}
            if len(requests) != 1:
                raise StateConflict("calibration runs", "of several requests", "rerun together")
            request = _request_row(session, requests.pop(), lock=True)
            if request.state == RequestState.CANCELLED:
                raise StateConflict(f"request {request.id}", request.state, "rerun")
            if any(_taken(r) for r in _calrun_rows(session, request.id)):
                raise StateConflict(
                    f"request {request.id}", "RUNNING", "rerun", "rerun once it has stopped"
                )
            for row in rows:
                _new_attempt(session, row, f"rerun by {actor}", actor)
            _update_request_state(session, request)
            return [_calrun_value(row) for row in rows]

        return self.write(work)

    def skip(
        self, calrun_id: int, actor: str, comment: str, dependants: Collection[str] = ()
    ) -> list[CalibrationRun]:
        """Skip a calibration run: its dependants in the request use the request's input tags.

        Allowed before a flow run has taken it, and once it has stopped without being
        uploaded. ``dependants`` (every calibration of the request downstream of it) that
        have stopped get a new attempt, computed without it; one still running refuses the
        skip. All or nothing; refusals are logged. Returns the skipped run, then the rerun
        ones.
        """
        target = f"calibration run {calrun_id}"

        def work(session: Session) -> list[CalibrationRun]:
            row = _calrun_row(session, calrun_id, lock=True)
            request = _request_row(session, row.request_id, lock=True)
            if request.state in (RequestState.CANCELLED, RequestState.DONE):
                raise StateConflict(f"request {request.id}", request.state, "skip")
            current = CalRunState(row.state)
            if current not in SKIPPABLE or _taken(row):
                why = "a flow run works on it" if _taken(row) else "skip it before it starts"
                raise StateConflict(_calrun_label(row), current, CalRunState.SKIPPED, why)
            downstream = [
                r
                for r in _calrun_rows(session, request.id, lock=True)
                if r.calibration in dependants
            ]
            running = [r.calibration for r in downstream if _taken(r)]
            if running:
                raise StateConflict(
                    _calrun_label(row), current, CalRunState.SKIPPED,
                    f"its dependants {', '.join(running)} are running: skip once they stopped",
                )  # fmt: skip
            _move(row, CalRunState.SKIPPED, message=f"skipped by {actor}: {comment}")
            add_action(session, actor, "skip", target, "ok", {"comment": comment})
            again = []
            for dependant in downstream:
                if CalRunState(dependant.state) in RERUNNABLE:
                    note = f"computed again without {row.calibration} (skipped by {actor})"
                    _new_attempt(session, dependant, note, actor)
                    again.append(dependant)
            _update_request_state(session, request)
            return [_calrun_value(r) for r in (row, *again)]

        try:
            return self.write(work)
        except StateConflict as exc:
            self.log_action(actor, "skip", target, "refused", {"why": str(exc)})
            raise

    def claim_start(self, calrun_id: int, claim: str) -> bool:
        """Take a calibration run that no flow run has taken yet, for the flow run about to be
        started for it (``claim`` marks it until :meth:`set_flow_run` names the run): of two
        callers, one gets it."""

        def work(session: Session) -> bool:
            row = _calrun_row(session, calrun_id, lock=True)
            if row.state != CalRunState.PLANNED or _taken(row):
                return False
            row.flow_run_id, row.updated = claim, now()
            return True

        return self.write(work)

    def set_flow_run(
        self, calrun_id: int, flow_run_id: str | None, message: str | None = None
    ) -> None:
        """Name the flow run started for a claimed calibration run (None: none could be
        started; the claim is given back)."""

        def work(session: Session) -> None:
            row = _calrun_row(session, calrun_id, lock=True)
            row.flow_run_id, row.updated = flow_run_id, now()
            if message is not None:
                row.message = message

        self.write(work)

    # --- collector jobs -------------------------------------------------------------------
    def record_jobs(self, calrun_id: int, jobs: Sequence[CollectorJob]) -> None:
        """Insert or update the collector jobs of a calibration run (as the engine reports)."""

        def work(session: Session) -> None:
            rows = {
                (r.iteration, r.number): r
                for r in session.scalars(
                    select(CollectorJobRow).where(CollectorJobRow.calibration_run_id == calrun_id)
                )
            }
            moment = now()
            for job in jobs:
                row = rows.get((job.iteration, job.number))
                if row is None:
                    row = CollectorJobRow(
                        calibration_run_id=calrun_id,
                        iteration=job.iteration,
                        number=job.number,
                    )
                    session.add(row)
                row.state, row.files, row.attempts = job.state, job.files, job.attempts
                row.seconds, row.host, row.batch_id = job.seconds, job.host, job.batch_id
                row.reason, row.updated = job.reason, moment

        self.write(work)

    def collector_jobs(self, calrun_id: int) -> list[CollectorJob]:
        def work(session: Session) -> list[CollectorJob]:
            query = (
                select(CollectorJobRow)
                .where(CollectorJobRow.calibration_run_id == calrun_id)
                .order_by(CollectorJobRow.iteration, CollectorJobRow.number)
            )
            return [
                CollectorJob(
                    r.calibration_run_id,
                    r.iteration,
                    r.number,
                    r.state,
                    r.files,
                    r.attempts,
                    r.seconds,
                    r.host,
                    r.batch_id,
                    r.reason,
                )
                for r in session.scalars(query)
            ]

        return self.read(work)

    # --- sign-off -------------------------------------------------------------------------
    def signoff(
        self, calrun_id: int, decision: SignoffDecision, actor: str, comment: str
    ) -> Signoff:
        """Record one decision on a calibration run that awaits it, in the action log too.

        Refused (StateConflict, logged as refused) when it does not await a sign-off, e.g.
        because someone decided first; the calibration run is then left as it is.
        """
        target = f"calibration run {calrun_id}"

        def work(session: Session) -> Signoff:
            row = _calrun_row(session, calrun_id, lock=True)
            if row.state != CalRunState.AWAITING_SIGNOFF:
                earlier = session.scalar(
                    select(SignoffRow).where(
                        SignoffRow.calibration_run_id == calrun_id,
                        SignoffRow.attempt == row.attempt,
                    )
                )
                note = (
                    f"{earlier.actor} chose {earlier.decision} at {utc(earlier.at):%Y-%m-%d %H:%M}"
                    if earlier is not None
                    else "it does not await a sign-off"
                )
                raise StateConflict(_calrun_label(row), row.state, _decided(decision), note)
            action = add_action(
                session,
                actor,
                f"signoff {decision.value}",
                target,
                "ok",
                {"comment": comment, "attempt": row.attempt},
            )
            signoff = SignoffRow(
                calibration_run_id=calrun_id,
                attempt=row.attempt,
                decision=decision.value,
                actor=actor,
                comment=comment,
                at=action.at,
                action_id=action.id,
            )
            session.add(signoff)
            _move(row, _decided(decision), message=f"{decision.value} by {actor}: {comment}")
            session.flush()
            _update_request_state(session, _request_row(session, row.request_id, lock=True))
            return _signoff_value(signoff)

        try:
            return self.write(work)
        except StateConflict as exc:
            self.log_action(
                actor, f"signoff {decision.value}", target, "refused", {"why": str(exc)}
            )
            raise

    def approval(self, calrun_id: int) -> Signoff | None:
        """The approval of the calibration run's current attempt, if one is in the action log."""

        def work(session: Session) -> Signoff | None:
            row = _calrun_row(session, calrun_id)
            signoff = session.scalar(
                select(SignoffRow)
                .join(ActionRow, ActionRow.id == SignoffRow.action_id)
                .where(
                    SignoffRow.calibration_run_id == calrun_id,
                    SignoffRow.attempt == row.attempt,
                    SignoffRow.decision == SignoffDecision.APPROVE.value,
                    ActionRow.target == f"calibration run {calrun_id}",
                    ActionRow.action == f"signoff {SignoffDecision.APPROVE.value}",
                )
            )
            return _signoff_value(signoff) if signoff is not None else None

        return self.read(work)

    def signoffs(self, calrun_id: int) -> list[Signoff]:
        def work(session: Session) -> list[Signoff]:
            query = (
                select(SignoffRow)
                .where(SignoffRow.calibration_run_id == calrun_id)
                .order_by(SignoffRow.id)
            )
            return [_signoff_value(row) for row in session.scalars(query)]

        return self.read(work)


# --- inside a transaction ---------------------------------------------------------------------
def _taken(row: CalibrationRunRow) -> bool:
    """A flow run works on it (or one is being started for it)."""
    state = CalRunState(row.state)
    return state.active and (row.started is not None or row.flow_run_id is not None)


def _new_attempt(session: Session, row: CalibrationRunRow, message: str, actor: str) -> None:
    """The next attempt of a stopped calibration run: PLANNED, untaken, to be signed off anew."""
    row.attempt += 1
    _move(row, CalRunState.PLANNED, message=message)
    row.started = row.finished = None
    row.result = row.iteration = None
    row.flow_run_id = None
    add_action(session, actor, "rerun", f"calibration run {row.id}", "ok",
               {"attempt": row.attempt})  # fmt: skip


def _decided(decision: SignoffDecision) -> CalRunState:
    return CalRunState.APPROVED if decision is SignoffDecision.APPROVE else CalRunState.REJECTED


def _calrun_label(row: CalibrationRunRow) -> str:
    return f"calibration run {row.id} ({row.calibration} of request {row.request_id})"


def _move(
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


def _request_row(session: Session, request_id: int, lock: bool = False) -> RequestRow:
    query = select(RequestRow).where(RequestRow.id == request_id)
    row = session.scalar(query.with_for_update() if lock else query)
    if row is None:
        raise UnknownRecord("request", request_id)
    return row


def _calrun_row(session: Session, calrun_id: int, lock: bool = False) -> CalibrationRunRow:
    query = select(CalibrationRunRow).where(CalibrationRunRow.id == calrun_id)
    row = session.scalar(query.with_for_update() if lock else query)
    if row is None:
        raise UnknownRecord("calibration run", calrun_id)
    return row


def _calrun_rows(session: Session, request_id: int, lock: bool = False) -> list[CalibrationRunRow]:
    query = (
        select(CalibrationRunRow)
        .where(CalibrationRunRow.request_id == request_id)
        .order_by(CalibrationRunRow.id)
    )
    return list(session.scalars(query.with_for_update() if lock else query))


def _update_request_state(session: Session, row: RequestRow) -> None:
    if row.state == RequestState.CANCELLED:
        return
    rows = _calrun_rows(session, row.id)
    states = [CalRunState(r.state) for r in rows]
    if not states and row.state == RequestState.FAILED:
        return  # its plan failed (fail_request): it has no calibration runs to say otherwise
    queued = sum(1 for r in rows if r.state == CalRunState.PLANNED and not _taken(r))
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
    return _action_value(row)


def _summary(row: RequestRow) -> dict[str, Any]:
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
def _request_value(row: RequestRow) -> Request:
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


def _calrun_value(row: CalibrationRunRow) -> CalibrationRun:
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


def _signoff_value(row: SignoffRow) -> Signoff:
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


def _action_value(row: ActionRow) -> Action:
    return Action(
        id=row.id,
        at=utc(row.at),
        actor=row.actor,
        action=row.action,
        target=row.target,
        outcome=row.outcome,
        detail=dict(row.detail),
    )
