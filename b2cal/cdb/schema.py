"""The tables of the embedded conditions database, and the values their rows hold.

Three tables: global tags, payloads, payload IoVs. They keep to what SQLite, PostgreSQL and
MariaDB do alike: plain column types (a tag's state is its name as text, no enum types to
migrate), constraints for identity, fixed constraint names. The Alembic migrations
(``b2cal/cdb/migrations``) create the same schema; their environment imports :data:`metadata`
and :data:`VERSION_TABLE` from here, and a test compares the two.
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
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from b2cal.cdb.model import GlobalTag, Payload, PayloadIoV, TagState
from b2cal.core.iov import IoV
from b2cal.sql import tables
from b2cal.sql.migrations import Migrations

#: Alembic's bookkeeping table; named apart so b2cal's own state DB may share the database.
VERSION_TABLE = "cdb_alembic_version"
#: The conditions database's Alembic scripts (``b2cal/cdb/migrations``) and version table.
MIGRATIONS = Migrations(Path(__file__).with_name("migrations"), VERSION_TABLE)
#: What messages call this database.
LABEL = "conditions database"


class _Base(DeclarativeBase):
    metadata = tables.metadata()


metadata = _Base.metadata


_MYSQL_TABLE = tables.MYSQL_TABLE
_utc = tables.utc
#: Now, as a new row's creation time (to the second, see :func:`b2cal.sql.tables.now`).
creation_time = tables.now


class GlobalTagRow(_Base):
    """A global tag; its state is the TagState value (plain text: no enum types to migrate)."""

    __tablename__ = "cdb_global_tag"
    __table_args__ = (_MYSQL_TABLE,)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    state: Mapped[str] = mapped_column(String(16))
    description: Mapped[str] = mapped_column(Text)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    def value(self) -> GlobalTag:
        return GlobalTag(self.name, TagState(self.state), self.description, _utc(self.created))


class PayloadRow(_Base):
    """A stored payload: (name, checksum) is its identity, (name, revision) its label."""

    __tablename__ = "cdb_payload"
    __table_args__ = (
        UniqueConstraint("name", "revision"),
        UniqueConstraint("name", "checksum"),
        _MYSQL_TABLE,
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    revision: Mapped[int]
    checksum: Mapped[str] = mapped_column(String(32))
    size: Mapped[int] = mapped_column(BigInteger)
    provenance: Mapped[dict[str, Any]] = mapped_column(JSON)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    def value(self) -> Payload:
        return Payload(
            self.name,
            self.revision,
            self.checksum,
            self.size,
            dict(self.provenance),
            _utc(self.created),
        )


class PayloadIoVRow(_Base):
    """A payload valid for an IoV in a tag; ends use the IoV conventions (-1 = open)."""

    __tablename__ = "cdb_payload_iov"
    # One payload starts once per tag at a given run; a last guard against duplicated rows.
    __table_args__ = (
        UniqueConstraint("tag_id", "payload_id", "exp_low", "run_low"),
        _MYSQL_TABLE,
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    tag_id: Mapped[int] = mapped_column(ForeignKey("cdb_global_tag.id"))
    payload_id: Mapped[int] = mapped_column(ForeignKey("cdb_payload.id"), index=True)
    exp_low: Mapped[int]
    run_low: Mapped[int]
    exp_high: Mapped[int]
    run_high: Mapped[int]
    payload: Mapped[PayloadRow] = relationship()

    @property
    def iov(self) -> IoV:
        return IoV(self.exp_low, self.run_low, self.exp_high, self.run_high)

    @iov.setter
    def iov(self, iov: IoV) -> None:
        self.exp_low, self.run_low = iov.exp_low, iov.run_low
        self.exp_high, self.run_high = iov.exp_high, iov.run_high

    def value(self, tag: str) -> PayloadIoV:
        """The entry, in the tag of that name (the row knows the tag's id only)."""
        return PayloadIoV(tag, self.payload.value(), self.iov)
