"""Alembic's environment for the embedded conditions database.

Alembic runs this file; nothing imports it. b2cal upgrades the schema itself
(:func:`b2cal.sql.migrations.upgrade_schema`) and hands over a connection already inside its
schema lock and transaction. A developer writing a new revision gives a URL instead, through
``b2cal.cdb.schema.MIGRATIONS.config(url)``. The version table has a name of its own so that
b2cal's state database may live in the same database.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection

from b2cal.cdb.schema import VERSION_TABLE, metadata


def _migrate(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def _run() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _migrate(connection)
        return
    url = context.config.get_main_option("sqlalchemy.url")
    if url is None:
        raise RuntimeError("no connection and no sqlalchemy.url given to the migrations")
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            _migrate(connection)
    finally:
        engine.dispose()


_run()
