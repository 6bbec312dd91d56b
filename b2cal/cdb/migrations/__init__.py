"""Alembic migrations of the embedded conditions database (run by ``b2cal.sql.migrations``)."""
