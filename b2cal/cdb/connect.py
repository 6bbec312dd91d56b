"""Opening the configured conditions database: the URL's scheme picks the store.

``http(s)://…`` is a nopayloaddb server; anything else is an SQLAlchemy URL for the embedded
store (``sqlite:///…``, ``postgresql+psycopg://…``, ``mysql+pymysql://…``). The embedded store's
payload files go to ``B2CAL_CDB_PAYLOADS`` if set, else beside an SQLite file
(``cdb.sqlite`` → ``cdb.payloads/``), else to ``~/.b2cal/payloads`` for a database server.

Only a caller that is about to store something opens with ``create=True``: for anyone else a
missing SQLite file is an error (:class:`~b2cal.errors.DatabaseError`, "nothing has been stored
in it yet") and no file or folder is made.
"""

from __future__ import annotations

from b2cal.cdb.store import ConditionsStore
from b2cal.settings import Settings
from b2cal.sql.engine import sqlite_file


def open_store(
    url: str | None = None, settings: Settings | None = None, *, create: bool = True
) -> ConditionsStore:
    """The conditions database at ``url`` (default: the configured one, see b2cal.settings).

    With ``create`` false, an SQLite database that does not exist yet is refused instead of
    created (with its folders), e.g. for commands that only read.
    """
    settings = settings or Settings()
    target = url or settings.cdb_database_url
    if target.startswith(("http://", "https://")):
        from b2cal.cdb.nopayloaddb.store import RestStore

        token = settings.cdb_token.get_secret_value() if settings.cdb_token else None
        return RestStore(target, token=token)
    from b2cal.cdb.embedded import EmbeddedStore

    payload_dir = settings.cdb_payloads or settings.cdb_payload_dir
    database = sqlite_file(target)
    if database is not None:
        # An SQLite database is a file: its payload files go beside it, so whoever opens the
        # same file (another user, another B2CAL_HOME) finds them.
        payload_dir = settings.cdb_payloads or database.with_suffix(".payloads")
    return EmbeddedStore(target, payload_dir, create=create)
