"""Discovery's records: files seen on a site's storage, runs, and the buckets runs fall into.

A scan (:func:`discover`) lists every data file under the site's storage roots
(:func:`b2cal.catalog.discovery.scan`) and records it as SEEN with its size and mtime. A SEEN
file whose size and mtime have stayed the same for the site's ``settle_seconds`` (or whose ROOT
header says it is complete) is opened, its metadata checked against its name, and it becomes
REGISTERED, in a transaction that first locks its row and checks it is still SEEN with the same
size and mtime: two scans at once register each file once. A registered file's run joins the
open bucket of its experiment (a new bucket is opened once the open one has as many runs as the
rule says); a file for a run whose bucket is closed already counts as a *late file* of that
bucket. At the end of a scan, buckets that are full (and have no file still settling) or whose
time window has passed are closed: each closed bucket is the unit of one prompt request.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from b2cal.catalog.discovery import Observation, root_header_complete, scan, settled
from b2cal.catalog.inputs import InputFile
from b2cal.catalog.rootfile import one_line, read_metadata
from b2cal.db.database import SYSTEM, StateDatabase
from b2cal.db.model import Bucket, DataFile
from b2cal.db.rows import add_action
from b2cal.db.schema import BucketRow, FileRow, RunRow, now, utc
from b2cal.db.states import BucketState, FileStatus
from b2cal.errors import StateConflict, UnknownRecord
from b2cal.sites import BucketRule, Site


def path_key(path: Path | str) -> str:
    return hashlib.sha256(str(path).encode()).hexdigest()


@dataclass
class ScanReport:
    """What one scan did, for the CLI's table and the flow's log."""

    seen: int = 0
    settling: int = 0
    registered: list[str] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)
    late: list[str] = field(default_factory=list)
    closed: list[Bucket] = field(default_factory=list)
    missing_roots: list[str] = field(default_factory=list)


def discover(
    db: StateDatabase,
    site: Site,
    *,
    clock: Callable[[], datetime] = now,
    on_file: Callable[[Observation], None] | None = None,
) -> ScanReport:
    """Scan the site's storage once: record what is there, register settled files, close
    buckets whose rule says so. Running it again registers nothing new."""
    report = ScanReport()
    for root in site.storage_roots:
        if not root.is_dir():
            report.missing_roots.append(str(root))
            continue
        for observation in scan(root):
            report.seen += 1
            if on_file is not None:
                on_file(observation)
            unchanged_since = _observe(db, site.name, observation, clock())
            if unchanged_since is None:
                continue  # registered (or found bad) before, and unchanged
            complete = root_header_complete(observation.path, observation.size)
            if not settled(unchanged_since, clock(), site.settle_seconds, complete):
                report.settling += 1
                continue
            _register(db, site, observation, report, clock)
    report.closed.extend(close_due_buckets(db, site, clock()))
    return report


def _file_row(session: Session, site: str, path: str | Path) -> FileRow | None:
    """The file's row, locked for the transaction."""
    return session.scalar(
        select(FileRow)
        .where(FileRow.site == site, FileRow.path_key == path_key(path))
        .with_for_update()
    )


def _observe(db: StateDatabase, site: str, seen: Observation, moment: datetime) -> datetime | None:
    """Record the file as seen; the time since which it is unchanged if it is (still) SEEN."""
    return db.write(lambda session: _observed(session, site, seen, moment))


def _observed(session: Session, site: str, seen: Observation, moment: datetime) -> datetime | None:
    row = _file_row(session, site, seen.path)
    if row is None:
        session.add(
            FileRow(
                site=site,
                path_key=path_key(seen.path),
                path=str(seen.path),
                size=seen.size,
                mtime_ns=seen.mtime_ns,
                seen=moment,
                status=FileStatus.SEEN,
                exp=seen.name.exp,
                run=seen.name.run,
                stream=seen.name.stream,
            )
        )
        return moment
    if (row.size, row.mtime_ns) != (seen.size, seen.mtime_ns):
        if row.status == FileStatus.BAD:  # replaced or repaired: look at it again
            row.status, row.reason = FileStatus.SEEN, None
        elif row.status != FileStatus.SEEN:
            # A registered file that changed: keep the record, say so (it is not read again).
            row.reason = f"changed on disk after registration (size {row.size} -> {seen.size})"
            return None
        row.size, row.mtime_ns, row.seen = seen.size, seen.mtime_ns, moment
        return moment
    return utc(row.seen) if row.status == FileStatus.SEEN else None


def _register(
    db: StateDatabase,
    site: Site,
    seen: Observation,
    report: ScanReport,
    clock: Callable[[], datetime],
) -> None:
    """Read the file's metadata (outside any transaction: it is slow), then register it."""
    name = seen.name
    try:
        metadata = read_metadata(seen.path)
        wanted = {"experiment": name.exp, "run": name.run, "stream": name.stream}
        wrong = [k for k, v in wanted.items() if metadata.get(k) != v]
        if wrong:
            raise ValueError(
                "metadata says "
                + ", ".join(f"{k}={metadata.get(k)!r}" for k in wrong)
                + " but the name says "
                + ", ".join(f"{k}={wanted[k]!r}" for k in wrong)
            )
        events = int(metadata.get("nevents", 0))
        reason = None
    except Exception as exc:  # any unreadable file is recorded as bad, with the reason
        events, reason = 0, one_line(exc)

    def work(session: Session) -> str | None:
        row = _file_row(session, site.name, seen.path)
        if (
            row is None
            or row.status != FileStatus.SEEN
            or (row.size, row.mtime_ns) != (seen.size, seen.mtime_ns)
        ):
            return None  # another scan registered it, or it changed while we read it
        moment = clock()
        row.exp, row.run, row.stream = name.exp, name.run, name.stream
        if reason is not None:
            row.status, row.reason = FileStatus.BAD, reason
            return "bad"
        row.status, row.events, row.registered = FileStatus.REGISTERED, events, moment
        return _assign_run(session, site, name.exp, name.run, moment)

    outcome = db.write(work)
    if outcome == "bad":
        report.bad.append(f"{seen.path}: {reason}")
    elif outcome == "late":
        report.late.append(str(seen.path))
    elif outcome is not None:
        report.registered.append(str(seen.path))


def _assign_run(session: Session, site: Site, exp: int, run: int, moment: datetime) -> str:
    """Put the run in a bucket of the site (its own if it has one); "late" if that bucket has
    closed already."""
    known = session.scalar(
        select(RunRow)
        .where(RunRow.site == site.name, RunRow.exp == exp, RunRow.run == run)
        .with_for_update()
    )
    if known is not None and known.bucket_id is not None:
        bucket = session.get(BucketRow, known.bucket_id, with_for_update=True)
        assert bucket is not None
        if bucket.state != BucketState.OPEN:
            bucket.late_files += 1
            return "late"
        return "new"
    bucket = _bucket_for(session, site, exp, run, moment)
    if known is None:
        known = RunRow(exp=exp, run=run, site=site.name, first_registered=moment)
        session.add(known)
    known.bucket_id = bucket.id
    if bucket.state != BucketState.OPEN:
        bucket.late_files += 1
        return "late"
    bucket.first_run = min(bucket.first_run, run)
    bucket.last_run = max(bucket.last_run, run)
    return "new"


def _bucket_for(session: Session, site: Site, exp: int, run: int, moment: datetime) -> BucketRow:
    """The bucket of the site a new run belongs to: one whose range holds it (a closed one:
    the run is late), a closed one before the newest closed one (late too), else the newest
    open bucket, or a new one once that holds as many runs as the rule says. A full bucket
    is not closed here: it closes at the end of the scan, once none of its files is still
    settling (:func:`close_due_buckets`)."""
    buckets = list(
        session.scalars(
            select(BucketRow)
            .where(BucketRow.site == site.name, BucketRow.exp == exp)
            .order_by(BucketRow.number)
            .with_for_update()
        )
    )
    for bucket in buckets:
        if bucket.first_run <= run <= bucket.last_run:
            return bucket
    earlier = [b for b in buckets if b.state != BucketState.OPEN]
    if earlier and run < max(b.last_run for b in earlier):
        # Older than the newest closed bucket: it belongs to the closed bucket after it.
        return min((b for b in earlier if b.last_run >= run), key=lambda b: b.last_run)
    open_buckets = [b for b in buckets if b.state == BucketState.OPEN]
    newest = open_buckets[-1] if open_buckets else None
    full = site.buckets.runs
    if newest is not None and (full is None or _run_count(session, newest) < full):
        return newest
    number = max((b.number for b in buckets), default=0) + 1
    bucket = BucketRow(
        site=site.name,
        exp=exp,
        number=number,
        first_run=run,
        last_run=run,
        state=BucketState.OPEN,
        opened=moment,
        late_files=0,
    )
    session.add(bucket)
    session.flush()
    return bucket


def _run_count(session: Session, bucket: BucketRow) -> int:
    return int(session.scalar(select(func.count()).where(RunRow.bucket_id == bucket.id)) or 0)


def _due(session: Session, bucket: BucketRow, rule: BucketRule, moment: datetime) -> bool:
    if rule.window_hours is not None:
        return moment - utc(bucket.opened) >= timedelta(hours=rule.window_hours)
    assert rule.runs is not None
    if _run_count(session, bucket) < rule.runs:
        return False
    settling = session.scalar(
        select(func.count()).where(
            FileRow.site == bucket.site,
            FileRow.status == FileStatus.SEEN,
            FileRow.exp == bucket.exp,
            FileRow.run >= bucket.first_run,
            FileRow.run <= bucket.last_run,
        )
    )
    return not settling


def close_due_buckets(db: StateDatabase, site: Site, moment: datetime) -> list[Bucket]:
    """Close the site's open buckets whose rule says they are complete."""

    def work(session: Session) -> list[Bucket]:
        closed = []
        query = select(BucketRow).where(
            BucketRow.site == site.name, BucketRow.state == BucketState.OPEN
        )
        for bucket in session.scalars(query.with_for_update()):
            if _due(session, bucket, site.buckets, moment):
                closed.append(_close(session, bucket, SYSTEM, moment, site.buckets.describe()))
        return closed

    return db.write(work)


def close_bucket(db: StateDatabase, site: str, exp: int, number: int, actor: str) -> Bucket:
    """Close an open bucket of the site now (``b2cal bucket close``)."""

    def work(session: Session) -> Bucket:
        bucket = session.scalar(
            select(BucketRow)
            .where(BucketRow.site == site, BucketRow.exp == exp, BucketRow.number == number)
            .with_for_update()
        )
        if bucket is None:
            raise UnknownRecord("bucket", f"{number} of experiment {exp} at site {site}")
        if bucket.state != BucketState.OPEN:
            raise StateConflict(_label(bucket), bucket.state, BucketState.CLOSED, "closed already")
        return _close(session, bucket, actor, now(), "by hand")

    return db.write(work)


def buckets(db: StateDatabase, site: str | None = None, exp: int | None = None) -> list[Bucket]:
    def work(session: Session) -> list[Bucket]:
        query = select(BucketRow).order_by(BucketRow.exp, BucketRow.number)
        if site is not None:
            query = query.where(BucketRow.site == site)
        if exp is not None:
            query = query.where(BucketRow.exp == exp)
        return [_bucket_value(session, row) for row in session.scalars(query)]

    return db.read(work)


def awaiting_request(db: StateDatabase, site: str) -> list[Bucket]:
    """The site's buckets that wait for their prompt request (CLOSED: closed and never
    processed, or whose request could not be started; not HELD ones, whose request was
    cancelled on purpose)."""
    return [b for b in buckets(db, site) if b.state is BucketState.CLOSED]


def bucket(db: StateDatabase, bucket_id: int) -> Bucket:
    def work(session: Session) -> Bucket:
        row = session.get(BucketRow, bucket_id)
        if row is None:
            raise UnknownRecord("bucket", bucket_id)
        return _bucket_value(session, row)

    return db.read(work)


def registered_files(
    db: StateDatabase, site: str, exp: int, run_low: int, run_high: int, streams: set[str]
) -> list[InputFile]:
    """The registered files of those runs and streams at the site: what a request reads."""

    def work(session: Session) -> list[InputFile]:
        query = select(FileRow).where(
            FileRow.site == site,
            FileRow.status == FileStatus.REGISTERED,
            FileRow.exp == exp,
            FileRow.run >= run_low,
            FileRow.run <= run_high,
        )
        return sorted(
            InputFile(exp=row.exp, run=row.run, stream=row.stream, path=Path(row.path))
            for row in session.scalars(query)
            if row.stream in streams and row.exp is not None and row.run is not None
        )

    return db.read(work)


def files(db: StateDatabase, site: str, status: FileStatus | None = None) -> list[DataFile]:
    def work(session: Session) -> list[DataFile]:
        query = select(FileRow).where(FileRow.site == site).order_by(FileRow.id)
        if status is not None:
            query = query.where(FileRow.status == status.value)
        return [_file_value(row) for row in session.scalars(query)]

    return db.read(work)


def mark_bad(db: StateDatabase, site: str, path: str, reason: str, actor: str) -> bool:
    """A registered file that broke a collector every time: BAD, with the reason, so that new
    requests leave it out (it is looked at again if it changes: a transfer redone). Whether
    it was marked now."""
    target = f"file {path}"

    def work(session: Session) -> bool:
        row = _file_row(session, site, path)
        if row is None or row.status != FileStatus.REGISTERED:
            return False
        row.status, row.reason = FileStatus.BAD, reason
        add_action(session, actor, "mark bad", target, "ok", {"site": site, "reason": reason})
        return True

    return db.write(work)


def clear_bad(db: StateDatabase, site: str, path: str, actor: str) -> DataFile:
    """A person clears a file's BAD mark (the file was repaired, or the mark was wrong): it is
    SEEN again, and the next discovery reads and registers it once it has settled (or marks
    it bad again, saying why). Refused for a file that is not marked bad."""
    target = f"file {path}"

    def work(session: Session) -> DataFile:
        row = _file_row(session, site, path)
        if row is None:
            raise UnknownRecord(f"file at site {site}", path)
        if row.status != FileStatus.BAD:
            raise StateConflict(target, row.status, FileStatus.SEEN, "it is not marked bad")
        add_action(session, actor, "clear bad", target, "ok", {"site": site, "was": row.reason})
        row.status, row.reason, row.seen = FileStatus.SEEN, None, now()
        return _file_value(row)

    return db.write(work)


def _close(session: Session, bucket: BucketRow, actor: str, moment: datetime, why: str) -> Bucket:
    bucket.state, bucket.closed = BucketState.CLOSED, moment
    add_action(session, actor, "bucket close", _label(bucket), "ok", {"why": why})
    session.flush()
    return _bucket_value(session, bucket)


def _label(bucket: BucketRow) -> str:
    return f"bucket {bucket.number} of experiment {bucket.exp}"


def _bucket_value(session: Session, row: BucketRow) -> Bucket:
    return Bucket(
        id=row.id,
        site=row.site,
        exp=row.exp,
        number=row.number,
        first_run=row.first_run,
        last_run=row.last_run,
        state=BucketState(row.state),
        opened=utc(row.opened),
        closed=utc(row.closed) if row.closed else None,
        late_files=row.late_files,
        runs=_run_count(session, row),
    )


def _file_value(row: FileRow) -> DataFile:
    return DataFile(
        id=row.id,
        site=row.site,
        path=row.path,
        size=row.size,
        status=FileStatus(row.status),
        exp=row.exp,
        run=row.run,
        stream=row.stream,
        events=row.events,
        registered=utc(row.registered) if row.registered else None,
        reason=row.reason,
    )
