"""The embedded conditions database: three SQL tables plus payload files on disk.

The same code runs on SQLite (a laptop, the tests), PostgreSQL and MariaDB (a site), so it keeps
to what all three do alike: plain column types, constraints for identity, sorting and JSON
matching in Python. Payload files are content-addressed (``<md5[:2]>/<md5>`` under the payload
directory): identical constants are stored once, and a file that changed on disk is noticed
because its name is its checksum.

Every write is one transaction that first locks the global tag's row, then asks
:mod:`b2cal.cdb.rules` what the write means, and only then changes anything, so a refused
request leaves the database as it was. Two writers racing to store the same new payload are
kept apart by the unique constraints: the loser's transaction fails, is retried, and then
finds the winner's payload.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Engine,
    ForeignKey,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    make_url,
    select,
    text,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    contains_eager,
    mapped_column,
    relationship,
)

from b2cal.caf.atomic_file import atomic_write_bytes
from b2cal.caf.iov import IoV
from b2cal.caf.localdb import md5sum
from b2cal.cdb.model import (
    CdbError,
    ChecksumMismatch,
    GlobalTag,
    Payload,
    PayloadIoV,
    TagState,
    UnknownPayload,
    UnknownTag,
)
from b2cal.cdb.rules import IoVChange, check_transition, plan_add, plan_remove
from b2cal.cdb.store import ConditionsStore, NewPayloadIoV

T = TypeVar("T")

#: Alembic's bookkeeping table; named apart so b2cal's own state DB may share the database.
VERSION_TABLE = "cdb_alembic_version"
MIGRATIONS = Path(__file__).with_name("migrations")

#: Engine option that makes SQLite take its write lock at BEGIN (see ``_serialise_sqlite``).
_WRITE = "b2cal_cdb_write"
#: How often a transaction that lost a race (unique constraint, deadlock) is tried in all.
_ATTEMPTS = 5
#: Driver error codes of a lost race: PostgreSQL serialization failure and deadlock, MariaDB
#: deadlock and lock wait timeout.
_RACE_CODES: frozenset[object] = frozenset({"40001", "40P01", 1213, 1205})
#: Server-wide locks held while the schema is upgraded, per dialect: (take, release). Taking
#: one answers 1 once it is held.
_PG_LOCK = 4780139082510599
_MYSQL_LOCK = (
    "SELECT GET_LOCK('b2cal_cdb_schema', 300)",
    "SELECT RELEASE_LOCK('b2cal_cdb_schema')",
)
_SCHEMA_LOCKS = {
    "postgresql": (
        f"SELECT 1 FROM pg_advisory_lock({_PG_LOCK})",
        f"SELECT pg_advisory_unlock({_PG_LOCK})",
    ),
    "mysql": _MYSQL_LOCK,
    "mariadb": _MYSQL_LOCK,
}
_CHECKSUM = re.compile(r"[0-9a-f]{32}")


# --- tables -----------------------------------------------------------------------------------
class _Base(DeclarativeBase):
    # Fixed constraint names, the same on every database and in the migrations.
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


#: MariaDB compares strings case-insensitively by default; names must compare exactly, as on
#: PostgreSQL and SQLite.
_MYSQL_TABLE = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}

metadata = _Base.metadata


class GlobalTagRow(_Base):
    """A global tag; its state is the TagState value (plain text: no enum types to migrate)."""

    __tablename__ = "cdb_global_tag"
    __table_args__ = (_MYSQL_TABLE,)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    state: Mapped[str] = mapped_column(String(16))
    description: Mapped[str] = mapped_column(Text)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))


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


# --- rows to values ---------------------------------------------------------------------------
def _utc(moment: datetime) -> datetime:
    """Times are stored in UTC; SQLite and MariaDB hand them back without a zone."""
    return moment.astimezone(UTC) if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _now() -> datetime:
    """Creation times are kept to the second: MariaDB's DATETIME has no fractions, and a value a
    write returns must equal the value read back later, on every database."""
    return datetime.now(UTC).replace(microsecond=0)


def _tag_value(row: GlobalTagRow) -> GlobalTag:
    return GlobalTag(row.name, TagState(row.state), row.description, _utc(row.created))


def _payload_value(row: PayloadRow) -> Payload:
    return Payload(
        row.name, row.revision, row.checksum, row.size, dict(row.provenance), _utc(row.created)
    )


def _entry_value(tag: str, row: PayloadIoVRow) -> PayloadIoV:
    return PayloadIoV(tag, _payload_value(row.payload), row.iov)


_Key = tuple[str, str, IoV]


def _key(entry: PayloadIoV) -> _Key:
    return (entry.payload.name, entry.payload.checksum, entry.iov)


def _sorted(entries: list[PayloadIoV]) -> list[PayloadIoV]:
    return sorted(entries, key=lambda e: (e.payload.name, e.iov.first))


@dataclass
class _Contents:
    """A tag's row and its IoV rows, as the rules see them and as the store changes them."""

    row: GlobalTagRow
    rows: dict[_Key, PayloadIoVRow]

    @property
    def tag(self) -> GlobalTag:
        return _tag_value(self.row)

    @property
    def entries(self) -> list[PayloadIoV]:
        return _sorted([_entry_value(self.row.name, row) for row in self.rows.values()])


@dataclass(frozen=True)
class _Upload:
    """A new entry after its checks: data, md5 and provenance as JSON will give it back."""

    entry: NewPayloadIoV
    checksum: str
    provenance: dict[str, Any]

    @classmethod
    def checked(cls, entry: NewPayloadIoV) -> _Upload:
        return cls(
            entry,
            entry.verified_checksum(),
            _json_object(entry.provenance, f"provenance of payload {entry.name}"),
        )

    @property
    def key(self) -> tuple[str, str]:
        return (self.entry.name, self.checksum)


def _json_object(value: dict[str, Any], what: str) -> dict[str, Any]:
    """``value`` after a JSON round trip (tuples become lists), or CdbError if it is not JSON.

    Provenance is stored as JSON, so values are compared in the form they come back in.
    """
    try:
        result: dict[str, Any] = json.loads(json.dumps(value))
    except (TypeError, ValueError) as exc:
        raise CdbError(f"{what} is not JSON: {exc}") from None
    return result


# --- queries inside a transaction ---------------------------------------------------------
def _tag_row(session: Session, name: str, lock: bool = False) -> GlobalTagRow:
    """The tag's row; with ``lock``, held until the transaction ends (writers queue on it)."""
    query = select(GlobalTagRow).where(GlobalTagRow.name == name)
    row = session.scalar(query.with_for_update() if lock else query)
    if row is None:
        raise UnknownTag(f"unknown global tag {name!r}")
    return row


def _iov_rows(session: Session, tag: GlobalTagRow, name: str | None = None) -> list[PayloadIoVRow]:
    query = (
        select(PayloadIoVRow)
        .join(PayloadIoVRow.payload)
        .options(contains_eager(PayloadIoVRow.payload))
        .where(PayloadIoVRow.tag_id == tag.id)
    )
    if name is not None:
        query = query.where(PayloadRow.name == name)
    return list(session.scalars(query))


def _locked_contents(session: Session, tag: str) -> _Contents:
    row = _tag_row(session, tag, lock=True)
    rows = _iov_rows(session, row)
    return _Contents(row, {_key(_entry_value(tag, r)): r for r in rows})


def _new_tag(session: Session, name: str, description: str) -> GlobalTagRow:
    """Insert an OPEN tag; a name taken meanwhile fails at flush and the write is retried."""
    if session.scalar(select(GlobalTagRow.id).where(GlobalTagRow.name == name)) is not None:
        raise CdbError(f"global tag {name!r} exists already")
    row = GlobalTagRow(
        name=name, state=TagState.OPEN.value, description=description, created=_now()
    )
    session.add(row)
    session.flush()
    return row


def _payload_rows(
    session: Session, uploads: Sequence[_Upload]
) -> dict[tuple[str, str], PayloadRow]:
    """Every upload's payload row: the stored one, or a new one with the next free revision.

    New rows are not added to the session here: they are stored only if the rules accept the
    write (by cascade from the IoV rows that use them).
    """
    rows: dict[tuple[str, str], PayloadRow] = {}
    next_revision: dict[str, int] = {}
    for upload in uploads:
        name, checksum = upload.key
        if upload.key in rows:
            continue
        stored = session.scalar(
            select(PayloadRow).where(PayloadRow.name == name, PayloadRow.checksum == checksum)
        )
        if stored is None:
            if name not in next_revision:
                last = session.scalar(
                    select(func.max(PayloadRow.revision)).where(PayloadRow.name == name)
                )
                next_revision[name] = (last or 0) + 1
            stored = PayloadRow(
                name=name,
                revision=next_revision[name],
                checksum=checksum,
                size=len(upload.entry.data),
                provenance=upload.provenance,
                created=_now(),
            )
            next_revision[name] += 1
        rows[upload.key] = stored
    return rows


def _apply(
    session: Session,
    contents: _Contents,
    change: IoVChange,
    payloads: dict[tuple[str, str], PayloadRow],
) -> None:
    """Carry out a change the rules have accepted."""
    for old, iov in change.close:
        contents.rows[_key(old)].iov = iov
    for entry in change.remove:
        session.delete(contents.rows[_key(entry)])
    for payload, iov in change.add:
        row = PayloadIoVRow(
            tag_id=contents.row.id, payload=payloads[(payload.name, payload.checksum)]
        )
        row.iov = iov
        session.add(row)


# --- engines, errors, schema ------------------------------------------------------------------
def _masked(url: str) -> str:
    """The URL with its password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", url)


def _reason(exc: BaseException) -> str:
    """The first line of what the driver said."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    lines = [line.strip() for line in str(orig).splitlines() if line.strip()]
    return lines[0] if lines else type(orig).__name__


def _lost_race(exc: DBAPIError) -> bool:
    """Whether trying the transaction again may succeed (another writer got there first)."""
    if isinstance(exc, IntegrityError):
        return True
    orig = exc.orig
    code = getattr(orig, "sqlstate", None) or (orig.args[0] if orig and orig.args else None)
    return code in _RACE_CODES


@contextmanager
def _database_errors(url: str) -> Iterator[None]:
    """Turn the driver's and Alembic's errors into one-line CdbErrors naming the database."""
    try:
        yield
    except DBAPIError as exc:
        raise CdbError(f"conditions database {_masked(url)}: {_reason(exc)}") from exc
    except CommandError as exc:
        raise CdbError(f"conditions database {_masked(url)}: schema: {_reason(exc)}") from exc


def _serialise_sqlite(engine: Engine) -> None:
    """Let SQLAlchemy, not the sqlite3 module, begin transactions; writers take the lock first.

    The sqlite3 module of Python 3.11 begins a transaction only at the first write, so reads
    before it are not isolated; and a reader that later writes can deadlock with another. A
    write transaction therefore starts with ``BEGIN IMMEDIATE`` (the lock that PostgreSQL and
    MariaDB get from ``SELECT ... FOR UPDATE`` on the tag row).
    """

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        dbapi_connection.execute("PRAGMA foreign_keys = ON")

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        write = connection.get_execution_options().get(_WRITE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _make_engine(url: str) -> Engine:
    """An engine with the same transaction behaviour on every supported database."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise CdbError(f"not a database URL: {_masked(url)}") from None
    try:
        if parsed.get_backend_name() == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(parsed, connect_args={"timeout": 60})
            _serialise_sqlite(engine)
            return engine
        return create_engine(parsed, isolation_level="READ COMMITTED", pool_pre_ping=True)
    except (ArgumentError, ImportError, OSError) as exc:
        raise CdbError(f"cannot use conditions database {_masked(url)}: {exc}") from None


def alembic_config(url: str | None = None) -> Config:
    """Alembic's configuration for the conditions-database migrations shipped with b2cal.

    b2cal hands migrations a connection of its own (see :func:`upgrade`); a developer writing
    a new revision passes ``url`` instead, e.g.
    ``command.revision(alembic_config(url), autogenerate=True, message="...")``.
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("path_separator", "os")
    # Revision files must be importable module names (mypy checks them with the package).
    config.set_main_option("file_template", "r%%(rev)s_%%(slug)s")
    if url is not None:
        config.set_main_option("sqlalchemy.url", url)
    return config


def _schema_revision(connection: Connection) -> str | None:
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


@contextmanager
def _schema_lock(connection: Connection) -> Iterator[None]:
    """Hold a server-wide lock so two processes opening a new database migrate it once.

    On SQLite the migration's own ``BEGIN IMMEDIATE`` does this. MariaDB commits DDL
    statement by statement, so the lock must span the whole upgrade, not one transaction.
    """
    take, release = _SCHEMA_LOCKS.get(connection.dialect.name, (None, None))
    if take is None or release is None:
        yield
        return
    got = connection.scalar(text(take))
    connection.commit()
    if got != 1:
        raise CdbError("timed out waiting for another process to upgrade the schema")
    try:
        yield
    finally:
        connection.execute(text(release))
        connection.commit()


def _upgrade(engine: Engine) -> None:
    config = alembic_config()
    script = ScriptDirectory.from_config(config)
    with engine.connect() as connection:
        current = _schema_revision(connection)
    if current == script.get_current_head():
        return
    if current is not None and current not in {r.revision for r in script.walk_revisions()}:
        raise CdbError(
            f"conditions database {engine.url.render_as_string(hide_password=True)} has schema "
            f"revision {current!r}, unknown to this b2cal (written by a newer version?)"
        )
    writer = engine.execution_options(**{_WRITE: True})
    with writer.connect() as connection, _schema_lock(connection), connection.begin():
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def upgrade(url: str) -> None:
    """Bring the conditions-database schema at ``url`` to the newest revision (idempotent)."""
    engine = _make_engine(url)
    try:
        with _database_errors(url):
            _upgrade(engine)
    finally:
        engine.dispose()


# --- the store --------------------------------------------------------------------------------
class EmbeddedStore(ConditionsStore):
    """A conditions database in an SQL database of b2cal's own, with payload files on disk.

    Opening it upgrades the schema to the newest revision, so a new database needs no setup.
    """

    def __init__(self, url: str, payload_dir: Path) -> None:
        self._url = url
        self.payload_dir = Path(payload_dir)
        self._engine = _make_engine(url)
        self._writer = self._engine.execution_options(**{_WRITE: True})
        try:
            with _database_errors(url):
                _upgrade(self._engine)
        except BaseException:
            self._engine.dispose()
            raise

    def __repr__(self) -> str:
        return f"EmbeddedStore({_masked(self._url)!r}, {str(self.payload_dir)!r})"

    @property
    def url(self) -> str:
        """The database URL as given (with its password; messages use a masked form)."""
        return self._url

    @property
    def engine(self) -> Engine:
        return self._engine

    def close(self) -> None:
        self._engine.dispose()

    def _run(self, work: Callable[[Session], T], write: bool = False) -> T:
        """``work`` in one transaction, tried again if it lost a race to another writer."""
        with _database_errors(self._url):
            for attempt in range(1, _ATTEMPTS + 1):
                try:
                    engine = self._writer if write else self._engine
                    with Session(engine) as session, session.begin():
                        return work(session)
                except DBAPIError as exc:
                    if attempt == _ATTEMPTS or not _lost_race(exc):
                        raise
                    time.sleep(0.01 * attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    # --- global tags ----------------------------------------------------------------------
    def tags(self) -> list[GlobalTag]:
        rows = self._run(lambda s: [_tag_value(r) for r in s.scalars(select(GlobalTagRow))])
        return sorted(rows, key=lambda t: t.name)

    def tag(self, name: str) -> GlobalTag:
        return self._run(lambda s: _tag_value(_tag_row(s, name)))

    def create_tag(self, name: str, description: str = "") -> GlobalTag:
        return self._run(lambda s: _tag_value(_new_tag(s, name, description)), write=True)

    def set_state(self, name: str, state: TagState) -> GlobalTag:
        def work(session: Session) -> GlobalTag:
            row = _tag_row(session, name, lock=True)
            check_transition(_tag_value(row), state)
            row.state = state.value
            return _tag_value(row)

        return self._run(work, write=True)

    def clone_tag(self, source: str, target: str, description: str = "") -> GlobalTag:
        def work(session: Session) -> GlobalTag:
            rows = _iov_rows(session, _tag_row(session, source))
            new = _new_tag(session, target, description)
            for row in rows:
                copy = PayloadIoVRow(tag_id=new.id, payload_id=row.payload_id)
                copy.iov = row.iov
                session.add(copy)
            return _tag_value(new)

        return self._run(work, write=True)

    # --- payloads and IoVs ----------------------------------------------------------------
    def iovs(self, tag: str, name: str | None = None) -> list[PayloadIoV]:
        def work(session: Session) -> list[PayloadIoV]:
            return [_entry_value(tag, r) for r in _iov_rows(session, _tag_row(session, tag), name)]

        return _sorted(self._run(work))

    def write_iovs(self, tag: str, entries: Sequence[NewPayloadIoV]) -> IoVChange:
        uploads = [_Upload.checked(entry) for entry in entries]
        data = {upload.checksum: upload.entry.data for upload in uploads}

        def work(session: Session) -> IoVChange:
            contents = _locked_contents(session, tag)
            payloads = _payload_rows(session, uploads)
            wanted = [(_payload_value(payloads[u.key]), u.entry.iov) for u in uploads]
            change = plan_add(contents.tag, contents.entries, wanted)
            for payload, _ in change.add:
                self._keep_file(payload.checksum, data[payload.checksum])
            _apply(session, contents, change, payloads)
            return change

        return self._run(work, write=True)

    def remove_iovs(self, tag: str, entries: Sequence[PayloadIoV]) -> IoVChange:
        def work(session: Session) -> IoVChange:
            contents = _locked_contents(session, tag)
            change = plan_remove(contents.tag, contents.entries, entries)
            _apply(session, contents, change, {})
            return change

        return self._run(work, write=True)

    def payload(self, name: str, revision: int) -> Payload:
        def work(session: Session) -> Payload:
            query = select(PayloadRow).where(
                PayloadRow.name == name, PayloadRow.revision == revision
            )
            row = session.scalar(query)
            if row is None:
                raise UnknownPayload(f"unknown payload {name!r} revision {revision}")
            return _payload_value(row)

        return self._run(work)

    def find_payloads(self, name: str | None = None, **provenance: Any) -> list[Payload]:
        wanted = _json_object(provenance, "provenance query")

        def work(session: Session) -> list[Payload]:
            query = select(PayloadRow)
            if name is not None:
                query = query.where(PayloadRow.name == name)
            return [_payload_value(r) for r in session.scalars(query)]

        found = [p for p in self._run(work) if _has_provenance(p, wanted)]
        return sorted(found, key=lambda p: (p.name, p.revision))

    # --- payload files --------------------------------------------------------------------
    def payload_file(self, checksum: str) -> Path:
        """Where the payload file with this md5 is kept."""
        if not _CHECKSUM.fullmatch(checksum):
            raise CdbError(f"not an md5 checksum: {checksum!r}")
        return self.payload_dir / checksum[:2] / checksum

    def payload_data(self, payload: Payload) -> bytes:
        path = self.payload_file(payload.checksum)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise CdbError(
                f"payload file of {payload.name} revision {payload.revision} is missing: {path}"
            ) from None
        actual = md5sum(data)
        if actual != payload.checksum:
            raise ChecksumMismatch(
                f"payload file {path} of {payload.name} revision {payload.revision} was changed "
                f"on disk: its checksum is {actual}, stored as {payload.checksum}"
            )
        return data

    def _keep_file(self, checksum: str, data: bytes) -> None:
        """Store the payload file, unless a correct one is there (a damaged one is replaced)."""
        path = self.payload_file(checksum)
        try:
            if path.is_file() and md5sum(path.read_bytes()) == checksum:
                return
            atomic_write_bytes(path, data)
        except OSError as exc:
            raise CdbError(f"cannot store payload file {path}: {exc}") from exc


def _has_provenance(payload: Payload, wanted: dict[str, Any]) -> bool:
    missing = object()
    return all(payload.provenance.get(key, missing) == value for key, value in wanted.items())
