"""Opening the configured conditions database: the URL's scheme picks the store.

``http(s)://…`` is a nopayloaddb server; anything else is an SQLAlchemy URL for the embedded
store (``sqlite:///…``, ``postgresql+psycopg://…``, ``mysql+pymysql://…``).
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

    if target.startswith("sqlite:///"):
        Path(target.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return EmbeddedStore(target, settings.cdb_payload_dir)
