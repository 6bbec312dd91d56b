"""SQL engines that behave alike on SQLite, PostgreSQL and MariaDB.

* Transactions: a write transaction begins by taking a lock that queues writers (on SQLite
  ``BEGIN IMMEDIATE``, see :func:`_serialise_sqlite`; on PostgreSQL and MariaDB the caller's
  ``SELECT ... FOR UPDATE`` of the row it changes). A transaction that lost a race to another
  writer (a unique constraint, a deadlock) is tried again (:func:`in_transaction`).
* Errors: what the driver or Alembic says becomes one :class:`~b2cal.errors.DatabaseError`
  line naming the database by its label ("conditions database") and its URL with the password
  masked (:func:`database_errors`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from alembic.util import CommandError
from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.engine import Connection
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from b2cal.errors import DatabaseError

T = TypeVar("T")

#: Engine option that makes SQLite take its write lock at BEGIN (see ``_serialise_sqlite``).
WRITE = "b2cal_write"
#: How often a transaction that lost a race (unique constraint, deadlock) is tried in all.
_ATTEMPTS = 5
#: Driver error codes of a lost race: PostgreSQL serialization failure and deadlock, MariaDB
#: deadlock and lock wait timeout.
_RACE_CODES: frozenset[object] = frozenset({"40001", "40P01", 1213, 1205})


@dataclass(frozen=True)
class SqlDatabase:
    """A database b2cal keeps records in: its URL, and what messages call it."""

    url: str
    label: str

    @property
    def masked_url(self) -> str:
        return masked(self.url)

    def error(self, reason: str) -> DatabaseError:
        return DatabaseError(self.label, self.masked_url, reason)


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
def database_errors(database: SqlDatabase) -> Iterator[None]:
    """Turn the driver's and Alembic's errors into one-line DatabaseErrors naming the database."""
    try:
        yield
    except DBAPIError as exc:
        raise database.error(_reason(exc)) from exc
    except CommandError as exc:
        raise database.error(f"schema: {_reason(exc)}") from exc


# --- engines and transactions -----------------------------------------------------------------
def _serialise_sqlite(engine: Engine) -> None:
    """Let SQLAlchemy, not the sqlite3 module, begin transactions; writers take the lock first.

    The sqlite3 module of Python 3.11 begins a transaction only at the first write, so reads
    before it are not isolated; and a reader that later writes can deadlock with another. A
    write transaction therefore starts with ``BEGIN IMMEDIATE`` (the lock that PostgreSQL and
    MariaDB get from ``SELECT ... FOR UPDATE``).
    """

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        dbapi_connection.execute("PRAGMA foreign_keys = ON")

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        write = connection.get_execution_options().get(WRITE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def sqlite_file(url: str) -> Path | None:
    """The file of an SQLite URL (None for other databases and in-memory SQLite)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def make_engine(database: SqlDatabase, create: bool = True) -> Engine:
    """An engine with the same transaction behaviour on every supported database.

    Write transactions run on ``engine.execution_options(**{WRITE: True})``. Without
    ``create``, an SQLite file that does not exist is refused instead of created (a command
    that only reads must not leave an empty database behind).
    """
    try:
        parsed = make_url(database.url)
    except ArgumentError:
        raise DatabaseError(database.label, masked(database.url), "not a database URL") from None
    try:
        if parsed.get_backend_name() == "sqlite":
            path = sqlite_file(database.url)
            if path is not None:
                if not create and not path.is_file():
                    raise database.error("does not exist (nothing has been stored in it yet)")
                path.parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(parsed, connect_args={"timeout": 60})
            _serialise_sqlite(engine)
            return engine
        return create_engine(parsed, isolation_level="READ COMMITTED", pool_pre_ping=True)
    except (ArgumentError, ImportError, OSError) as exc:
        raise database.error(f"cannot be used: {exc}") from None


def in_transaction(engine: Engine, database: SqlDatabase, work: Callable[[Session], T]) -> T:
    """``work`` in one transaction, tried again if it lost a race to another writer."""
    with database_errors(database):
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                with Session(engine) as session, session.begin():
                    return work(session)
            except DBAPIError as exc:
                if attempt == _ATTEMPTS or not _lost_race(exc):
                    raise
                time.sleep(0.01 * attempt)
    raise AssertionError("unreachable")  # pragma: no cover
