"""The database chain: where a collector or algorithm looks up payloads.

First match wins, in this order: this calibration's previous iteration, then its dependencies'
outputs, then the request's input databases. Each link is a local database directory, which
is also how the chain travels to a collector job on another machine: as a list of paths.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from b2cal.caf.calibration import PayloadDoc
from b2cal.caf.iov import ExpRun
from b2cal.caf.localdb import LocalDatabase, PayloadEntry


class PayloadChain:
    """An ordered list of local databases; lookups return the first match."""

    def __init__(self, directories: Sequence[Path]) -> None:
        self.directories = [Path(d) for d in directories]
        self.databases = [LocalDatabase(d) for d in self.directories]

    def find(self, name: str, exprun: ExpRun) -> PayloadEntry | None:
        for database in self.databases:
            entry = database.find(name, exprun)
            if entry is not None:
                return entry
        return None

    def lookup(self, name: str, exprun: ExpRun) -> PayloadDoc | None:
        for database in self.databases:
            doc = database.payload(name, exprun)
            if doc is not None:
                return doc
        return None

    def entries(self) -> list[PayloadEntry]:
        """Every payload entry of every link, in chain order (for provenance)."""
        return [entry for database in self.databases for entry in database.entries]
