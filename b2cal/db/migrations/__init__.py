"""Alembic migrations of b2cal's state database (run by ``b2cal.sql.migrations``)."""
