"""Alembic environment of the embedded conditions database (Alembic runs it, not b2cal)."""

from b2cal.cdb.schema import VERSION_TABLE, metadata
from b2cal.sql.migrations import run_migrations

run_migrations(metadata, VERSION_TABLE)
