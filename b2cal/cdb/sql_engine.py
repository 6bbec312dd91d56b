"""SQL engines that behave alike on SQLite, PostgreSQL and MariaDB, for the embedded store.

* Transactions: a write transaction begins by taking a lock that queues writers (on SQLite
  ``BEGIN IMMEDIATE``, see :func:`_serialise_sqlite`; on PostgreSQL and MariaDB the store's
  ``SELECT ... FOR UPDATE`` of the tag row). A transaction that lost a race to another writer
  (a unique constraint, a deadlock) is tried again (:func:`in_transaction`).
* Errors: what the driver or Alembic says becomes one line naming the database, its URL with
  the password masked (:func:`database_errors`).
* Schema: opening a database upgrades it to the newest Alembic revision (:func:`upgrade`),
  under a server-wide lock, so two processes opening a new database migrate it once.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from b2cal.cdb.model import CdbError
from b2cal.cdb.schema import VERSION_TABLE

T = TypeVar("T")

MIGRATIONS = Path(__file__).with_name("migrations")

#: Engine option that makes SQLite take its write lock at BEGIN (see ``_serialise_sqlite``).
WRITE = "b2cal_cdb_write"
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


# --- errors -----------------------------------------------------------------------------------
def masked(url: str) -> str:
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
def database_errors(url: str) -> Iterator[None]:
    """Turn the driver's and Alembic's errors into one-line CdbErrors naming the database."""
    try:
        yield
    except DBAPIError as exc:
        raise CdbError(f"conditions database {masked(url)}: {_reason(exc)}") from exc
    except CommandError as exc:
        raise CdbError(f"conditions database {masked(url)}: schema: {_reason(exc)}") from exc


# --- engines and transactions -----------------------------------------------------------------
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
        write = connection.get_execution_options().get(WRITE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def make_engine(url: str) -> Engine:
    """An engine with the same transaction behaviour on every supported database.

    Write transactions run on ``engine.execution_options(**{WRITE: True})``.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise CdbError(f"not a database URL: {masked(url)}") from None
    try:
        if parsed.get_backend_name() == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(parsed, connect_args={"timeout": 60})
            _serialise_sqlite(engine)
            return engine
        return create_engine(parsed, isolation_level="READ COMMITTED", pool_pre_ping=True)
    except (ArgumentError, ImportError, OSError) as exc:
        raise CdbError(f"cannot use conditions database {masked(url)}: {exc}") from None


def in_transaction(engine: Engine, url: str, work: Callable[[Session], T]) -> T:
    """``work`` in one transaction, tried again if it lost a race to another writer.

    ``url`` is the database's, for the one-line errors.
    """
    with database_errors(url):
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                with Session(engine) as session, session.begin():
                    return work(session)
            except DBAPIError as exc:
                if attempt == _ATTEMPTS or not _lost_race(exc):
                    raise
                time.sleep(0.01 * attempt)
    raise AssertionError("unreachable")  # pragma: no cover


# --- schema -----------------------------------------------------------------------------------
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


def upgrade_schema(engine: Engine) -> None:
    """Bring the schema of ``engine``'s database to the newest revision, if it is not there.

    Raises the driver's and Alembic's errors (see :func:`database_errors`).
    """
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
    writer = engine.execution_options(**{WRITE: True})
    with writer.connect() as connection, _schema_lock(connection), connection.begin():
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def upgrade(url: str) -> None:
    """Bring the conditions-database schema at ``url`` to the newest revision (idempotent)."""
    engine = make_engine(url)
    try:
        with database_errors(url):
            upgrade_schema(engine)
    finally:
        engine.dispose()
