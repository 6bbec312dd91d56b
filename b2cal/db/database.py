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

from b2cal.db.model import Action, CalibrationRun, Request, Signoff
from b2cal.db.rows import (
    action_value,
    add_action,
    calrun_label,
    calrun_row,
    calrun_rows,
    calrun_value,
    decided,
    move_row,
    new_attempt,
    request_row,
    request_value,
    signoff_value,
    summary,
    taken,
    update_request_state,
)
from b2cal.db.schema import (
    LABEL,
    MIGRATIONS,
    ActionRow,
    BucketRow,
    CalibrationRunRow,
    RequestFlowRunRow,
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
    check_attempt,
    check_move,
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
            return [action_value(row) for row in session.scalars(query)]

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
        flow_run_id: str | None = None,
    ) -> Request:
        """A new request (PENDING); a bucket's request moves the bucket to PROCESSING. Made
        by a flow run (``flow_run_id``), it is recorded as that flow run's in the same
        transaction, so a crash cannot leave a request its flow run does not know."""

        def work(session: Session) -> Request:
            if bucket_id is not None:
                bucket = session.scalar(
                    select(BucketRow).where(BucketRow.id == bucket_id).with_for_update()
                )
                if bucket is None:
                    raise UnknownRecord("bucket", bucket_id)
                label = f"bucket {bucket.number} of experiment {bucket.exp}"
                if bucket.state not in (BucketState.CLOSED, BucketState.HELD):
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
                flow_run_id=flow_run_id,
            )
            session.add(row)
            session.flush()
            row.staging_tag = staging_tag_name(kind, row.id)
            if flow_run_id is not None:
                session.add(RequestFlowRunRow(flow_run_id=flow_run_id, request_id=row.id,
                                              recorded=moment))  # fmt: skip
            add_action(session, actor, "request create", f"request {row.id}", "ok", summary(row))
            return request_value(row)

        return self.write(work)

    def request(self, request_id: int) -> Request:
        return self.read(lambda s: request_value(request_row(s, request_id)))

    def requests(self, limit: int = 50, state: RequestState | None = None) -> list[Request]:
        def work(session: Session) -> list[Request]:
            query = select(RequestRow).order_by(RequestRow.id.desc()).limit(limit)
            if state is not None:
                query = query.where(RequestRow.state == state.value)
            return [request_value(row) for row in session.scalars(query)]

        return self.read(work)

    def set_request_flow_run(self, request_id: int, flow_run_id: str) -> None:
        """The flow run that processes the request now (each one is kept as one of its)."""

        def work(session: Session) -> None:
            row = request_row(session, request_id, lock=True)
            row.flow_run_id = flow_run_id
            row.updated = now()
            if session.get(RequestFlowRunRow, flow_run_id) is None:
                session.add(RequestFlowRunRow(flow_run_id=flow_run_id, request_id=request_id,
                                              recorded=row.updated))  # fmt: skip

        self.write(work)

    def request_of_flow_run(self, flow_run_id: str) -> Request | None:
        """The request a flow run processed (or made), if any."""

        def work(session: Session) -> Request | None:
            found = session.get(RequestFlowRunRow, flow_run_id)
            return None if found is None else request_value(request_row(session, found.request_id))

        return self.read(work)

    def start_request(self, request_id: int) -> list[CalibrationRun]:
        """The request's calibration runs, created PLANNED the first time (idempotent)."""

        def work(session: Session) -> list[CalibrationRun]:
            row = request_row(session, request_id, lock=True)
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
            update_request_state(session, row)
            return [calrun_value(existing[name]) for name in row.calibrations]

        return self.write(work)

    def finish_request(self, request_id: int, message: str | None = None) -> Request:
        """Bring the request's state up to date with its calibration runs; a DONE request's
        bucket becomes PROCESSED."""

        def work(session: Session) -> Request:
            row = request_row(session, request_id, lock=True)
            if message is not None:
                row.message = message
            update_request_state(session, row)
            return request_value(row)

        return self.write(work)

    def fail_request(self, request_id: int, message: str) -> Request:
        """The request could not be started (its plan failed): FAILED, saying why. A retried
        flow run that gets further moves it on."""

        def work(session: Session) -> Request:
            row = request_row(session, request_id, lock=True)
            if row.state == RequestState.CANCELLED:
                raise StateConflict(f"request {request_id}", row.state, RequestState.FAILED)
            row.state, row.message, row.updated = RequestState.FAILED.value, message, now()
            return request_value(row)

        return self.write(work)

    def cancel_request(
        self, request_id: int, actor: str, *, started: bool = True
    ) -> list[CalibrationRun]:
        """Mark the request and its unfinished calibration runs CANCELLED (the caller stops
        the flow runs); returns the calibration runs that were cancelled. A bucket's request
        cancelled on purpose leaves the bucket HELD (a person starts the next); one that
        could not be ``started`` leaves it CLOSED, so that discovery tries again."""

        def work(session: Session) -> list[CalibrationRun]:
            row = request_row(session, request_id, lock=True)
            if row.state in (RequestState.DONE, RequestState.CANCELLED):
                raise StateConflict(f"request {request_id}", row.state, RequestState.CANCELLED)
            cancelled = []
            for calrun in calrun_rows(session, request_id, lock=True):
                state = CalRunState(calrun.state)
                if state.active or state in (CalRunState.AWAITING_SIGNOFF, CalRunState.APPROVED):
                    move_row(calrun, CalRunState.CANCELLED, message=f"request cancelled by {actor}")
                    cancelled.append(calrun_value(calrun))
            row.state = RequestState.CANCELLED
            row.updated = now()
            if row.bucket_id is not None:
                bucket = session.get(BucketRow, row.bucket_id, with_for_update=True)
                if bucket is not None and bucket.state == BucketState.PROCESSING:
                    bucket.state = BucketState.HELD if started else BucketState.CLOSED
            add_action(session, actor, "request cancel", f"request {request_id}", "ok", {})
            return cancelled

        return self.write(work)

    # --- calibration runs -----------------------------------------------------------------
    def calibration_runs(self, request_id: int | None = None) -> list[CalibrationRun]:
        def work(session: Session) -> list[CalibrationRun]:
            query = select(CalibrationRunRow).order_by(CalibrationRunRow.id)
            if request_id is not None:
                query = query.where(CalibrationRunRow.request_id == request_id)
            return [calrun_value(row) for row in session.scalars(query)]

        return self.read(work)

    def calibration_runs_of(self, request_ids: Collection[int]) -> dict[int, list[CalibrationRun]]:
        """The calibration runs of several requests in one query (pages list many requests)."""

        def work(session: Session) -> dict[int, list[CalibrationRun]]:
            found: dict[int, list[CalibrationRun]] = {i: [] for i in request_ids}
            query = (
                select(CalibrationRunRow)
                .where(CalibrationRunRow.request_id.in_(list(request_ids)))
                .order_by(CalibrationRunRow.id)
            )
            for row in session.scalars(query):
                found[row.request_id].append(calrun_value(row))
            return found

        return self.read(work) if request_ids else {}

    def calibration_run(self, calrun_id: int) -> CalibrationRun:
        return self.read(lambda s: calrun_value(calrun_row(s, calrun_id)))

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
            return calrun_value(row)

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
            row = calrun_row(session, calrun_id, lock=True)
            if expected is not None and CalRunState(row.state) not in expected:
                raise StateConflict(calrun_label(row), row.state, state, "it has moved on")
            if row.state != state:
                check_move(calrun_label(row), CalRunState(row.state), state)
            move_row(row, state, message=message, iteration=iteration, result=result)
            if flow_run_id is not None:
                row.flow_run_id = flow_run_id
            if summary is not None:
                row.summary = summary
            request = request_row(session, row.request_id, lock=True)
            update_request_state(session, request)
            return calrun_value(row)

        return self.write(work)

    def rerun(
        self, calrun_ids: Sequence[int], actor: str, attempt: int | None = None
    ) -> list[CalibrationRun]:
        """Start stopped calibration runs of one request again (PLANNED, next attempt: a new
        attempt needs a new sign-off), all or none. ``attempt``: the attempt of the first
        one that the caller saw (checked under the lock, so a rerun in between is seen)."""

        def work(session: Session) -> list[CalibrationRun]:
            rows = [calrun_row(session, calrun_id, lock=True) for calrun_id in calrun_ids]
            if rows:
                first = rows[0]
                check_attempt(
                    calrun_label(first), first.state, CalRunState.PLANNED, first.attempt, attempt
                )
            for row in rows:
                current = CalRunState(row.state)
                if current not in RERUNNABLE:
                    raise StateConflict(
                        calrun_label(row), current, CalRunState.PLANNED, "it has not stopped"
                    )
            requests = {row.request_id for row in rows}
            if len(requests) != 1:
                raise StateConflict("calibration runs", "of several requests", "rerun together")
            request = request_row(session, requests.pop(), lock=True)
            if request.state == RequestState.CANCELLED:
                raise StateConflict(f"request {request.id}", request.state, "rerun")
            if any(taken(r) for r in calrun_rows(session, request.id)):
                raise StateConflict(
                    f"request {request.id}", "RUNNING", "rerun", "rerun once it has stopped"
                )
            for row in rows:
                new_attempt(session, row, f"rerun by {actor}", actor)
            update_request_state(session, request)
            return [calrun_value(row) for row in rows]

        return self.write(work)

    def skip(
        self,
        calrun_id: int,
        actor: str,
        comment: str,
        dependants: Collection[str] = (),
        attempt: int | None = None,
    ) -> list[CalibrationRun]:
        """Skip a calibration run: its dependants in the request use the request's input tags.

        Allowed before a flow run has taken it, and once it has stopped without being
        uploaded. ``dependants`` (every calibration of the request downstream of it) that
        have stopped get a new attempt, computed without it; one still running refuses the
        skip. All or nothing; refusals are logged. Returns the skipped run, then the rerun
        ones. ``attempt``: the attempt the caller saw, as for :meth:`rerun`.
        """
        target = f"calibration run {calrun_id}"

        def work(session: Session) -> list[CalibrationRun]:
            row = calrun_row(session, calrun_id, lock=True)
            check_attempt(calrun_label(row), row.state, CalRunState.SKIPPED, row.attempt, attempt)
            request = request_row(session, row.request_id, lock=True)
            if request.state in (RequestState.CANCELLED, RequestState.DONE):
                raise StateConflict(f"request {request.id}", request.state, "skip")
            current = CalRunState(row.state)
            if current not in SKIPPABLE or taken(row):
                why = "a flow run works on it" if taken(row) else "skip it before it starts"
                raise StateConflict(calrun_label(row), current, CalRunState.SKIPPED, why)
            downstream = [
                r
                for r in calrun_rows(session, request.id, lock=True)
                if r.calibration in dependants
            ]
            running = [r.calibration for r in downstream if taken(r)]
            if running:
                raise StateConflict(
                    calrun_label(row), current, CalRunState.SKIPPED,
                    f"its dependants {', '.join(running)} are running: skip once they stopped",
                )  # fmt: skip
            move_row(row, CalRunState.SKIPPED, message=f"skipped by {actor}: {comment}")
            add_action(session, actor, "skip", target, "ok", {"comment": comment})
            again = []
            for dependant in downstream:
                if CalRunState(dependant.state) in RERUNNABLE:
                    note = f"computed again without {row.calibration} (skipped by {actor})"
                    new_attempt(session, dependant, note, actor)
                    again.append(dependant)
            update_request_state(session, request)
            return [calrun_value(r) for r in (row, *again)]

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
            row = calrun_row(session, calrun_id, lock=True)
            if row.state != CalRunState.PLANNED or taken(row):
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
            row = calrun_row(session, calrun_id, lock=True)
            row.flow_run_id, row.updated = flow_run_id, now()
            if message is not None:
                row.message = message

        self.write(work)

    # --- sign-off -------------------------------------------------------------------------
    def signoff(
        self,
        calrun_id: int,
        decision: SignoffDecision,
        actor: str,
        comment: str,
        attempt: int | None = None,
    ) -> Signoff:
        """Record one decision on a calibration run that awaits it, in the action log too.

        Refused (StateConflict, logged as refused) when it does not await a sign-off, e.g.
        because someone decided first, or (with ``attempt``: the attempt the decider saw)
        when a rerun has made a newer attempt since; the calibration run is then left as it is.
        """
        target = f"calibration run {calrun_id}"

        def work(session: Session) -> Signoff:
            row = calrun_row(session, calrun_id, lock=True)
            check_attempt(calrun_label(row), row.state, decided(decision), row.attempt, attempt)
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
                raise StateConflict(calrun_label(row), row.state, decided(decision), note)
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
            move_row(row, decided(decision), message=f"{decision.value} by {actor}: {comment}")
            session.flush()
            update_request_state(session, request_row(session, row.request_id, lock=True))
            return signoff_value(signoff)

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
            row = calrun_row(session, calrun_id)
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
            return signoff_value(signoff) if signoff is not None else None

        return self.read(work)

    def signoffs(self, calrun_id: int) -> list[Signoff]:
        def work(session: Session) -> list[Signoff]:
            query = (
                select(SignoffRow)
                .where(SignoffRow.calibration_run_id == calrun_id)
                .order_by(SignoffRow.id)
            )
            return [signoff_value(row) for row in session.scalars(query)]

        return self.read(work)
