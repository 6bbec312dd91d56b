"""The payload files of a nopayloaddb server, which keeps only their URLs.

The bytes live in a payload directory shared by every client of the server (a shared
filesystem, or one exported read-only by a web server for the payload URLs):
``<dir>/<name>/rev_<revision>/<md5>`` plus ``provenance.json`` beside it (name, revision,
checksum, size, creation time, provenance), which
:meth:`~b2cal.cdb.nopayloaddb.store.RestStore.find_payloads` searches. A revision is claimed by
renaming a complete staging folder into place, under a lock file, so a revision never exists
half-written and the same constants never get two revisions.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from b2cal.cdb.model import Payload
from b2cal.cdb.nopayloaddb.mapping import payload_url
from b2cal.cdb.store import read_payload_file
from b2cal.core.files import atomic_write_bytes, atomic_write_json, md5sum
from b2cal.errors import CdbError, UnknownPayload


class PayloadDirectory:
    """Payload files of a nopayloaddb server: ``<root>/<name>/rev_<n>/`` holds ``<md5>`` and
    ``provenance.json``.

    nopayloaddb keeps only URLs; the files must be where every client of the server finds
    them, so this folder is shared by all of them (e.g. a shared filesystem). Files are
    immutable: a revision folder appears complete (renamed into place) or not at all.
    """

    SIDECAR: Final = "provenance.json"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._known: dict[tuple[str, int], Payload] = {}

    def file(self, payload: Payload) -> Path:
        return self.root / payload_url(payload)

    def payload(self, name: str, revision: int) -> Payload | None:
        """The stored payload of that revision, or None."""
        if (name, revision) in self._known:
            return self._known[(name, revision)]
        try:
            doc = json.loads((self.root / name / f"rev_{revision}" / self.SIDECAR).read_text())
            found = Payload(
                name,
                revision,
                str(doc["checksum"]),
                int(doc["size"]),
                dict(doc["provenance"]),
                datetime.fromisoformat(doc["created"]),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            folder = self.root / name / f"rev_{revision}"
            raise CdbError(f"unreadable payload record in {folder}: {exc}") from None
        self._known[(name, revision)] = found
        return found

    def revisions(self, name: str) -> list[int]:
        folder = self.root / name
        if not folder.is_dir():
            return []
        return sorted(
            int(p.name[4:]) for p in folder.glob("rev_*") if p.name[4:].isdigit() and p.is_dir()
        )

    def find(self, name: str, checksum: str) -> Payload | None:
        """The payload ``name`` with these bytes (the lowest revision, should there be two)."""
        for revision in self.revisions(name):
            if (self.root / name / f"rev_{revision}" / checksum).is_file():
                return self.payload(name, revision)
        return None

    def all(self, name: str | None = None) -> list[Payload]:
        names = (
            [name]
            if name is not None
            else sorted(
                p.name for p in self.root.glob("*") if p.is_dir() and not p.name.startswith(".")
            )
        )
        found = (self.payload(n, r) for n in names for r in self.revisions(n))
        return [p for p in found if p is not None]

    def put(self, name: str, data: bytes, provenance: dict[str, Any]) -> Payload:
        """Store the payload unless it is there; either way, the stored payload."""
        checksum = md5sum(data)
        folder = self.root / name
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with self._locked(folder):
                stored = self.find(name, checksum)
                if stored is not None:
                    return stored
                return self._claim(folder, name, data, checksum, provenance)
        except OSError as exc:
            raise CdbError(f"cannot store payload {name} in {self.root}: {exc}") from exc

    def data(self, payload: Payload) -> bytes:
        path = self.file(payload)
        try:
            return read_payload_file(path, payload)
        except FileNotFoundError:
            raise UnknownPayload(
                payload.name,
                payload.revision,
                f"its file is not in the payload directory {self.root} ({path}); every client "
                "of a nopayloaddb server must use the same payload directory",
            ) from None

    @staticmethod
    @contextlib.contextmanager
    def _locked(folder: Path) -> Iterator[None]:
        """Writers of one payload name take turns (one revision per content, numbered in order)."""
        with open(folder / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _claim(
        self, folder: Path, name: str, data: bytes, checksum: str, provenance: dict[str, Any]
    ) -> Payload:
        """Write a staging folder, then rename it to the next free ``rev_<n>`` (atomic)."""
        created = datetime.now(UTC)
        staging = Path(tempfile.mkdtemp(dir=folder, prefix=".staging-"))
        try:
            atomic_write_bytes(staging / checksum, data)
            revision = (self.revisions(name) or [0])[-1] + 1
            while True:
                record = {
                    "name": name,
                    "revision": revision,
                    "checksum": checksum,
                    "size": len(data),
                    "created": created.isoformat(),
                    "provenance": provenance,
                }
                atomic_write_json(staging / self.SIDECAR, record)
                try:
                    os.rename(staging, folder / f"rev_{revision}")
                    break
                except OSError:  # taken by a writer without the lock (another host): next one
                    if not (folder / f"rev_{revision}").exists():
                        raise
                    revision += 1
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        payload = Payload(name, revision, checksum, len(data), provenance, created)
        self._known[(name, revision)] = payload
        return payload
