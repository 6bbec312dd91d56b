"""Alembic environment of b2cal's state database (Alembic runs it, not b2cal)."""

from b2cal.db.schema import VERSION_TABLE, metadata
from b2cal.sql.migrations import run_migrations

run_migrations(metadata, VERSION_TABLE)
