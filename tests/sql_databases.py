"""Fresh SQL databases for tests: SQLite files, and real PostgreSQL and MariaDB servers.

The servers run on loopback (PostgreSQL with trust authentication, MariaDB root with
an empty password). Each test gets a database of its own with a unique name, dropped afterwards
whatever happened, so tests never see each other's data. A server that is not running makes the
test skip and say which server and why, rather than fail on a laptop without it; under
``CI=true`` it fails instead.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError
from unavailable import unavailable

from b2cal.cdb.embedded import EmbeddedStore


@dataclass(frozen=True)
class Server:
    """A database server: how to reach it as an administrator, and how to name a database."""

    title: str
    admin_url: str
    #: The URL of database ``name`` on this server, for the store.
    url: Callable[[str], str]
    create: str
    #: Drops the database even while connections are open (a test may have left one).
    drop: str


SERVERS = {
    "postgresql": Server(
        "PostgreSQL on 127.0.0.1:5432",
        "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
        lambda name: f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}",
        "CREATE DATABASE {name}",
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)",
    ),
    "mariadb": Server(
        "MariaDB on 127.0.0.1:3306",
        "mysql+pymysql://root@127.0.0.1:3306/",
        lambda name: f"mysql+pymysql://root@127.0.0.1:3306/{name}",
        "CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
        "DROP DATABASE IF EXISTS {name}",
    ),
}


@contextmanager
def _admin_connection(server: Server) -> Iterator[Connection]:
    """An autocommit connection to the server (CREATE/DROP DATABASE refuse transactions).

    It is held for the whole test, so the database can be dropped at the end even when the
    server has no connection to spare by then (other test runs share it).
    """
    engine = create_engine(server.admin_url, isolation_level="AUTOCOMMIT")
    try:
        try:
            connection = engine.connect()
        except OperationalError as exc:
            reason = str(exc.orig).strip().splitlines()[0]
            unavailable(f"{server.title} is not reachable: {reason}")
        with connection:
            yield connection
    finally:
        engine.dispose()


@contextmanager
def database_url(kind: str, tmp_path: Path) -> Iterator[str]:
    """The URL of a new, empty database of ``kind`` ("sqlite", "postgresql", "mariadb")."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'cdb.sqlite'}"
        return
    server = SERVERS[kind]
    name = f"b2cal_test_{uuid.uuid4().hex[:16]}"
    with _admin_connection(server) as admin:
        admin.execute(text(server.create.format(name=name)))
        try:
            yield server.url(name)
        finally:
            admin.execute(text(server.drop.format(name=name)))


@contextmanager
def embedded_store(kind: str, tmp_path: Path) -> Iterator[EmbeddedStore]:
    """A fresh embedded conditions database of ``kind``, closed and dropped afterwards."""
    with database_url(kind, tmp_path) as url:
        store = EmbeddedStore(url, tmp_path / "payloads")
        try:
            yield store
        finally:
            store.close()
