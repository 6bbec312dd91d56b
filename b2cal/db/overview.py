"""The calibration-level views of the state database: the requests × calibrations matrix of
the dashboard's overview, and one calibration's runs across buckets (its trend).

Pages list many rows, so each view is a fixed number of queries whatever its size — never one
per row (the page-cost test counts them): requests, their calibration runs and their buckets
in three, the open buckets with their run counts in one more.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from b2cal.db.database import StateDatabase
from b2cal.db.model import CalibrationRun, Request
from b2cal.db.rows import calrun_value, request_value
from b2cal.db.schema import BucketRow, CalibrationRunRow, RequestRow, RunRow, now, utc
from b2cal.db.states import BucketState, CalRunState

#: States whose run is over (its duration no longer grows).
_ENDED = {
    CalRunState.AWAITING_SIGNOFF, CalRunState.APPROVED, CalRunState.REJECTED,
    CalRunState.UPLOADED, CalRunState.FAILED, CalRunState.NOT_ENOUGH_DATA,
    CalRunState.CANCELLED, CalRunState.SKIPPED,
}  # fmt: skip


@dataclass(frozen=True)
class Cell:
    """One calibration run in the matrix."""

    calrun_id: int
    calibration: str
    state: CalRunState
    attempt: int
    #: Seconds from its start to its end (or to now, while it runs); None before it starts.
    seconds: float | None
    message: str | None

    @property
    def waiting(self) -> bool:
        return self.state is CalRunState.AWAITING_SIGNOFF


@dataclass(frozen=True)
class Row:
    """One request: its bucket's label for a prompt request, else its kind and runs."""

    request: Request
    label: str
    cells: dict[str, Cell]


@dataclass(frozen=True)
class OpenBucket:
    site: str
    exp: int
    number: int
    first_run: int
    last_run: int
    runs: int


@dataclass
class Overview:
    rows: list[Row]
    #: Every calibration of the rows, in the order their requests run them.
    calibrations: list[str]
    #: Buckets still collecting data (no request yet).
    open_buckets: list[OpenBucket] = field(default_factory=list)

    @property
    def waiting(self) -> list[Cell]:
        return [c for r in self.rows for c in r.cells.values() if c.waiting]


def _seconds(calrun: CalibrationRun, moment: datetime) -> float | None:
    if calrun.started is None:
        return None
    end = calrun.finished if calrun.state in _ENDED and calrun.finished else moment
    return max(0.0, (end - calrun.started).total_seconds())


def overview(
    db: StateDatabase,
    *,
    exp: int | None = None,
    site: str | None = None,
    kind: str | None = None,
    limit: int = 50,
) -> Overview:
    """The latest ``limit`` requests (filtered) with their calibration runs, newest first."""

    def work(session: Session) -> Overview:
        query = select(RequestRow).order_by(RequestRow.id.desc()).limit(limit)
        if exp is not None:
            query = query.where(RequestRow.exp == exp)
        if site is not None:
            query = query.where(RequestRow.site == site)
        if kind is not None:
            query = query.where(RequestRow.kind == kind)
        requests = [request_value(r) for r in session.scalars(query)]
        ids = [r.id for r in requests]
        runs: dict[int, list[CalibrationRun]] = {i: [] for i in ids}
        if ids:
            calruns = select(CalibrationRunRow).where(CalibrationRunRow.request_id.in_(ids))
            for row in session.scalars(calruns.order_by(CalibrationRunRow.id)):
                runs[row.request_id].append(calrun_value(row))
        bucket_ids = {r.bucket_id for r in requests if r.bucket_id is not None}
        numbers: dict[int, int] = {}
        if bucket_ids:
            for b in session.scalars(select(BucketRow).where(BucketRow.id.in_(bucket_ids))):
                numbers[b.id] = b.number
        moment = now()
        rows: list[Row] = []
        order: dict[str, int] = {}
        for request in requests:
            for name in request.calibrations:
                order.setdefault(name, len(order))
            if request.bucket_id in numbers:
                label = f"e{request.exp} bucket {numbers[request.bucket_id]}"
            else:
                label = f"{request.kind.value} e{request.exp} r{request.run_low}-{request.run_high}"
            cells = {
                c.calibration: Cell(
                    c.id, c.calibration, c.state, c.attempt, _seconds(c, moment), c.message
                )
                for c in runs[request.id]
            }
            rows.append(Row(request, label, cells))
        return Overview(rows, sorted(order, key=order.__getitem__), _open(session, exp, site))

    return db.read(work)


def _open(session: Session, exp: int | None, site: str | None) -> list[OpenBucket]:
    """Open buckets with their run counts, in one grouped query."""
    query = (
        select(BucketRow, func.count(RunRow.id))
        .outerjoin(RunRow, RunRow.bucket_id == BucketRow.id)
        .where(BucketRow.state == BucketState.OPEN.value)
        .group_by(BucketRow.id)
        .order_by(BucketRow.exp, BucketRow.number)
    )
    if exp is not None:
        query = query.where(BucketRow.exp == exp)
    if site is not None:
        query = query.where(BucketRow.site == site)
    return [
        OpenBucket(b.site, b.exp, b.number, b.first_run, b.last_run, count)
        for b, count in session.execute(query)
    ]


@dataclass(frozen=True)
class TrendPoint:
    """One calibration run of a calibration, with the bucket (or request) it calibrated."""

    calrun: CalibrationRun
    request: Request
    label: str


def calibration_history(
    db: StateDatabase,
    calibration: str,
    *,
    site: str | None = None,
    exp: int | None = None,
    kinds: Sequence[str] = ("prompt",),
    limit: int = 100,
) -> list[TrendPoint]:
    """The runs of ``calibration`` over the latest ``limit`` requests of ``kinds``, oldest
    first (two queries)."""

    def work(session: Session) -> list[TrendPoint]:
        query = (
            select(CalibrationRunRow, RequestRow, BucketRow.number)
            .join(RequestRow, RequestRow.id == CalibrationRunRow.request_id)
            .outerjoin(BucketRow, BucketRow.id == RequestRow.bucket_id)
            .where(CalibrationRunRow.calibration == calibration)
            .where(RequestRow.kind.in_(list(kinds)))
            .order_by(RequestRow.id.desc())
            .limit(limit)
        )
        if site is not None:
            query = query.where(RequestRow.site == site)
        if exp is not None:
            query = query.where(RequestRow.exp == exp)
        points = []
        for calrun, request, number in session.execute(query):
            label = (
                f"e{request.exp} bucket {number}" if number is not None else f"request {request.id}"
            )
            points.append(TrendPoint(calrun_value(calrun), request_value(request), label))
        return points[::-1]

    return db.read(work)


def when(moment: datetime | None) -> str:
    """A moment as the views show it (UTC, to the minute)."""
    return utc(moment).strftime("%Y-%m-%d %H:%M") if moment else ""
