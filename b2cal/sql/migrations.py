"""Alembic migrations of b2cal's databases, run by b2cal itself under a server-wide lock.

Each database b2cal keeps (the conditions database, the state database) ships its own Alembic
scripts and its own version table, so several of them may live in one SQL database. Opening a
database upgrades it to the newest revision (:func:`upgrade_schema`), under a lock held across
the whole upgrade, so two processes opening a new database migrate it once.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from alembic import command, context
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, MetaData, create_engine, text
from sqlalchemy.engine import Connection

from b2cal.sql.engine import WRITE, SqlDatabase, database_errors, make_engine


@dataclass(frozen=True)
class Migrations:
    """Where a database's Alembic scripts are and which table records its revision."""

    scripts: Path
    version_table: str

    def config(self, url: str | None = None) -> Config:
        """Alembic's configuration for these scripts.

        b2cal hands migrations a connection of its own (see :func:`upgrade_schema`); a
        developer writing a new revision passes ``url`` instead, e.g.
        ``command.revision(migrations.config(url), autogenerate=True, message="...")``.
        """
        config = Config()
        config.set_main_option("script_location", str(self.scripts))
        config.set_main_option("path_separator", "os")
        # Revision files must be importable module names (mypy checks them with the package).
        config.set_main_option("file_template", "r%%(rev)s_%%(slug)s")
        if url is not None:
            config.set_main_option("sqlalchemy.url", url)
        return config

    def head(self) -> str | None:
        return ScriptDirectory.from_config(self.config()).get_current_head()

    def lock_statements(self, dialect: str) -> tuple[str, str] | None:
        """(take, release) of this database's server-wide schema lock; taking answers 1."""
        if dialect == "postgresql":
            key = zlib.crc32(self.version_table.encode())
            return (
                f"SELECT 1 FROM pg_advisory_lock({key})",
                f"SELECT pg_advisory_unlock({key})",
            )
        if dialect in ("mysql", "mariadb"):
            name = f"b2cal_schema_{self.version_table}"
            return (f"SELECT GET_LOCK('{name}', 300)", f"SELECT RELEASE_LOCK('{name}')")
        return None  # SQLite: the migration's own BEGIN IMMEDIATE serialises it


def current_revision(connection: Connection, migrations: Migrations) -> str | None:
    context = MigrationContext.configure(
        connection, opts={"version_table": migrations.version_table}
    )
    return context.get_current_revision()


@contextmanager
def _schema_lock(
    connection: Connection, migrations: Migrations, database: SqlDatabase
) -> Iterator[None]:
    """Hold a server-wide lock so two processes opening a new database migrate it once.

    MariaDB commits DDL statement by statement, so the lock spans the whole upgrade, not one
    transaction.
    """
    statements = migrations.lock_statements(connection.dialect.name)
    if statements is None:
        yield
        return
    take, release = statements
    got = connection.scalar(text(take))
    connection.commit()
    if got != 1:
        raise database.error("timed out waiting for another process to upgrade the schema")
    try:
        yield
    finally:
        connection.execute(text(release))
        connection.commit()


def upgrade_schema(engine: Engine, migrations: Migrations, database: SqlDatabase) -> None:
    """Bring the schema of ``engine``'s database to the newest revision, if it is not there."""
    config = migrations.config()
    script = ScriptDirectory.from_config(config)
    with database_errors(database):
        with engine.connect() as connection:
            current = current_revision(connection, migrations)
        if current == script.get_current_head():
            return
        if current is not None and current not in {r.revision for r in script.walk_revisions()}:
            raise database.error(
                f"has schema revision {current!r}, unknown to this b2cal (written by a newer "
                "version?)"
            )
        writer = engine.execution_options(**{WRITE: True})
        with (
            writer.connect() as connection,
            _schema_lock(connection, migrations, database),
            connection.begin(),
        ):
            config.attributes["connection"] = connection
            command.upgrade(config, "head")


def upgrade(database: SqlDatabase, migrations: Migrations) -> None:
    """Bring the schema of ``database`` to the newest revision (idempotent)."""
    engine = make_engine(database)
    try:
        upgrade_schema(engine, migrations, database)
    finally:
        engine.dispose()


def run_migrations(metadata: MetaData, version_table: str) -> None:
    """The body of every b2cal database's Alembic ``env.py``.

    b2cal hands over a connection already inside its schema lock and transaction
    (:func:`upgrade_schema`); a developer writing a new revision gives a URL instead
    (:meth:`Migrations.config`). Each database has a version table of its own, so several
    may share one SQL database.
    """

    def migrate(connection: Connection) -> None:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            version_table=version_table,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()

    connection = context.config.attributes.get("connection")
    if connection is not None:
        migrate(connection)
        return
    url = context.config.get_main_option("sqlalchemy.url")
    if url is None:
        raise RuntimeError("no connection and no sqlalchemy.url given to the migrations")
    engine = create_engine(url)
    try:
        with engine.connect() as own:
            migrate(own)
    finally:
        engine.dispose()
