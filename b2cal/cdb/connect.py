"""Opening the configured conditions database: the URL's scheme picks the store.

``http(s)://…`` is a nopayloaddb server; anything else is an SQLAlchemy URL for the embedded
store (``sqlite:///…``, ``postgresql+psycopg://…``, ``mysql+pymysql://…``). The embedded store's
payload files go to ``B2CAL_CDB_PAYLOADS`` if set, else beside an SQLite file
(``cdb.sqlite`` → ``cdb.payloads/``), else to ``~/.b2cal/payloads`` for a database server.
"""

from __future__ import annotations

from pathlib import Path

from b2cal.cdb.store import ConditionsStore
from b2cal.settings import Settings


def open_store(url: str | None = None, settings: Settings | None = None) -> ConditionsStore:
    """The conditions database at ``url`` (default: the configured one, see b2cal.settings)."""
    settings = settings or Settings()
    target = url or settings.cdb_database_url
    if target.startswith(("http://", "https://")):
        from b2cal.cdb.nopayloaddb.store import RestStore

        token = settings.cdb_token.get_secret_value() if settings.cdb_token else None
        return RestStore(target, token=token)
    from b2cal.cdb.embedded import EmbeddedStore

    payload_dir = settings.cdb_payloads or settings.cdb_payload_dir
    if target.startswith("sqlite:///"):
        database = Path(target.removeprefix("sqlite:///"))
        database.parent.mkdir(parents=True, exist_ok=True)
        # An SQLite database is a file: its payload files go beside it, so whoever opens the
        # same file (another user, another B2CAL_HOME) finds them.
        payload_dir = settings.cdb_payloads or database.with_suffix(".payloads")
    return EmbeddedStore(target, payload_dir)
