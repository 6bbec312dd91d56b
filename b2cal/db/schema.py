"""The tables of b2cal's state database.

Files seen on a site's storage, runs, buckets, processing requests, calibration runs, collector
jobs, sign-offs and the action log. Like the conditions database they keep to what SQLite,
PostgreSQL and MariaDB do alike (states stored as their names in plain text, fixed constraint
names, binary collation on MariaDB) and share one SQL database with it if a site wants: table
names start with ``state_`` and the Alembic version table is ``state_alembic_version``. The
migrations (``b2cal/db/migrations``) create the same schema; a test compares the two.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from b2cal.sql import tables
from b2cal.sql.migrations import Migrations

VERSION_TABLE = "state_alembic_version"
MIGRATIONS = Migrations(Path(__file__).with_name("migrations"), VERSION_TABLE)
LABEL = "state database"

_MYSQL_TABLE = tables.MYSQL_TABLE
utc = tables.utc
now = tables.now


class _Base(DeclarativeBase):
    metadata = tables.metadata()


metadata = _Base.metadata


class FileRow(_Base):
    """A file seen on a site's storage, keyed by (site, path).

    ``path_key`` (the sha256 of the path) carries the uniqueness, since MariaDB cannot index a
    long path in utf8mb4. ``seen`` is when the file last changed size or mtime: it has settled
    once that is ``settle_seconds`` ago.
    """

    __tablename__ = "state_file"
    __table_args__ = (UniqueConstraint("site", "path_key"), _MYSQL_TABLE)

    id: Mapped[int] = mapped_column(primary_key=True)
    site: Mapped[str] = mapped_column(String(64))
    path_key: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16))
    exp: Mapped[int | None]
    run: Mapped[int | None]
    stream: Mapped[str | None] = mapped_column(String(64))
    events: Mapped[int | None] = mapped_column(BigInteger)
    registered: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    reason: Mapped[str | None] = mapped_column(Text)


class BucketRow(_Base):
    """A run range of one experiment at one site, numbered per site and experiment from 1."""

    __tablename__ = "state_bucket"
    __table_args__ = (UniqueConstraint("site", "exp", "number"), _MYSQL_TABLE)

    id: Mapped[int] = mapped_column(primary_key=True)
    site: Mapped[str] = mapped_column(String(64))
    exp: Mapped[int]
    number: Mapped[int]
    first_run: Mapped[int]
    last_run: Mapped[int]
    state: Mapped[str] = mapped_column(String(16))
    opened: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    closed: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: Files registered for its runs after it was closed (shown by ``b2cal status``).
    late_files: Mapped[int] = mapped_column(default=0)


class RunRow(_Base):
    """A run with registered data at a site, and the bucket it belongs to there."""

    __tablename__ = "state_run"
    __table_args__ = (UniqueConstraint("site", "exp", "run"), _MYSQL_TABLE)

    id: Mapped[int] = mapped_column(primary_key=True)
    exp: Mapped[int]
    run: Mapped[int]
    site: Mapped[str] = mapped_column(String(64))
    bucket_id: Mapped[int | None] = mapped_column(ForeignKey("state_bucket.id"), index=True)
    first_registered: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class RequestRow(_Base):
    """A processing request: what to calibrate, on which runs, where, with which tags."""

    __tablename__ = "state_request"
    __table_args__ = (_MYSQL_TABLE,)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    site: Mapped[str] = mapped_column(String(64))
    exp: Mapped[int]
    run_low: Mapped[int]
    run_high: Mapped[int]
    #: The bucket of a prompt request (a cancelled request's bucket may get another request).
    bucket_id: Mapped[int | None] = mapped_column(ForeignKey("state_bucket.id"), index=True)
    calibrations: Mapped[list[str]] = mapped_column(JSON)
    input_tags: Mapped[list[str]] = mapped_column(JSON)
    reference_tag: Mapped[str | None] = mapped_column(String(255))
    staging_tag: Mapped[str] = mapped_column(String(255))
    #: Expert settings per calibration, as ``caf run --config`` takes them.
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    open_ended: Mapped[bool]
    #: Calibrations that run at another site than the request's: calibration -> site
    #: (None, as for requests made before it existed: every one at the request's site).
    placement: Mapped[dict[str, str] | None] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16))
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str] = mapped_column(String(255))
    updated: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    flow_run_id: Mapped[str | None] = mapped_column(String(64))
    message: Mapped[str | None] = mapped_column(Text)


class RequestFlowRunRow(_Base):
    """A flow run that processed a request, one row per flow run (a request restarted has
    several over time): a flow run that made its request (``request-calibration``) finds it
    again here when Prefect runs it once more after a crash, instead of making a second."""

    __tablename__ = "state_request_flow_run"
    __table_args__ = (_MYSQL_TABLE,)

    flow_run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("state_request.id"), index=True)
    recorded: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class CalibrationRunRow(_Base):
    """One calibration for one request; ``attempt`` counts reruns (sign-offs name it)."""

    __tablename__ = "state_calibration_run"
    __table_args__ = (UniqueConstraint("request_id", "calibration"), _MYSQL_TABLE)

    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("state_request.id"))
    calibration: Mapped[str] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(24))
    attempt: Mapped[int] = mapped_column(default=1)
    iteration: Mapped[int | None]
    result: Mapped[str | None] = mapped_column(String(24))
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    flow_run_id: Mapped[str | None] = mapped_column(String(64))
    message: Mapped[str | None] = mapped_column(Text)
    #: Validation metrics and the constants' summary, for views that must not read files.
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class SignoffRow(_Base):
    """The one decision on one attempt of a calibration run."""

    __tablename__ = "state_signoff"
    __table_args__ = (UniqueConstraint("calibration_run_id", "attempt"), _MYSQL_TABLE)

    id: Mapped[int] = mapped_column(primary_key=True)
    calibration_run_id: Mapped[int] = mapped_column(ForeignKey("state_calibration_run.id"))
    attempt: Mapped[int]
    decision: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(255))
    comment: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    #: The action-log entry that recorded it (an approval without one is not acted on).
    action_id: Mapped[int] = mapped_column(ForeignKey("state_action.id"))


class ActionRow(_Base):
    """Who did what to which item, when, and how it ended (never changed once written)."""

    __tablename__ = "state_action"
    __table_args__ = (_MYSQL_TABLE,)

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(255))
    outcome: Mapped[str] = mapped_column(String(16))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)


class UserRow(_Base):
    """A person, by DN: whether the VO lists them (the last sync says), the grants the VO's
    roles give, and grants an admin added. Someone the VO no longer lists has no access.

    ``dn_key`` (the sha256 of the DN) carries the uniqueness, as for file paths: MariaDB cannot
    index a long DN in utf8mb4.
    """

    __tablename__ = "state_user"
    __table_args__ = (UniqueConstraint("dn_key"), _MYSQL_TABLE)

    id: Mapped[int] = mapped_column(primary_key=True)
    dn_key: Mapped[str] = mapped_column(String(64))
    dn: Mapped[str] = mapped_column(Text)
    name: Mapped[str] = mapped_column(String(255))
    email: Mapped[str] = mapped_column(String(255))
    in_vo: Mapped[bool]
    #: Grants as ``{"role": "expert", "calibrations": ["ChannelT0"]}``.
    vo_grants: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    extra_grants: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    synced: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated: Mapped[datetime] = mapped_column(DateTime(timezone=True))
