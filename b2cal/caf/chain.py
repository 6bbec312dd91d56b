"""The database chain: where a collector or algorithm looks up payloads.

First match wins, in this order: this calibration's previous iteration, then its dependencies'
outputs (nearest first), then the request's input databases. Each link is a local database
folder, which is also how the chain travels to a collector job on another machine: as paths,
each with a digest of what it holds, so that a job whose chain now holds other payloads is
never mistaken for one that is done.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from b2cal.caf.calibration import PayloadDoc
from b2cal.caf.records import ChainLink
from b2cal.core.files import md5sum, sha256sum
from b2cal.core.iov import ExpRun
from b2cal.core.localdb import DATABASE_TXT, LocalDatabase, PayloadEntry


class PayloadChain:
    """An ordered list of local databases; lookups return the first match."""

    def __init__(self, directories: Sequence[Path]) -> None:
        self.directories = [Path(d) for d in directories]
        self.databases = [LocalDatabase(d) for d in self.directories]

    def lookup(self, name: str, exprun: ExpRun) -> PayloadDoc | None:
        for database in self.databases:
            doc = database.payload(name, exprun)
            if doc is not None:
                return doc
        return None

    def entries(self) -> list[PayloadEntry]:
        """Every payload entry of every link, in chain order (for provenance)."""
        return [entry for database in self.databases for entry in database.entries]


def database_digest(directory: Path) -> str:
    """A digest of a local database's ``database.txt`` and the payload files it names."""
    path = Path(directory) / DATABASE_TXT
    if not path.is_file():
        return sha256sum(b"no database")
    parts = [path.read_bytes()]
    for entry in LocalDatabase(directory).entries:
        parts.append(f"{entry.line()} {md5sum(entry.read_bytes())}\n".encode())
    return sha256sum(b"".join(parts))


def chain_links(directories: Sequence[Path]) -> list[ChainLink]:
    return [ChainLink(path=Path(d), digest=database_digest(Path(d))) for d in directories]
