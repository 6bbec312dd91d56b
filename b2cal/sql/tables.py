"""What the tables of every b2cal database share, so they behave alike on every server.

Fixed constraint names (the same in the models and in the Alembic migrations), the binary
utf8mb4 collation on MariaDB (names compare exactly, as on PostgreSQL and SQLite), and times in
UTC to the second.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import MetaData


def metadata() -> MetaData:
    """A database's MetaData with b2cal's constraint names."""
    return MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


#: Table options: MariaDB compares strings case-insensitively by default; names must compare
#: exactly, as on PostgreSQL and SQLite.
MYSQL_TABLE = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def utc(moment: datetime) -> datetime:
    """Times are stored in UTC; SQLite and MariaDB hand them back without a zone."""
    return moment.astimezone(UTC) if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def now() -> datetime:
    """Now, to the second: MariaDB's DATETIME has no fractions, and a value written must equal
    the value read back later, on every database."""
    return datetime.now(UTC).replace(microsecond=0)
