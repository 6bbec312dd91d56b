"""Alembic migrations of the embedded conditions database (run by ``b2cal.cdb.sql_engine``)."""
