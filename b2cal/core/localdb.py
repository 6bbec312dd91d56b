"""basf2-style local conditions databases: ``database.txt`` plus payload files.

This is the output format of every calibration (docs/engine.md, *Outputs*) and the form in
which payloads travel between iterations and between calibrations of one run. A directory
holds, directly inside it, ``database.txt`` with one line per payload IoV::

    dbstore/<Name> <revision> <expLow>,<runLow>,<expHigh>,<runHigh>

and the payload files ``dbstore_<Name>_rev_<revision>.json``. Revisions count from 1 per name in
order of IoV start. Payload files hold only the constants, serialised canonically, so the same
constants always give the same bytes and the same md5 checksum.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from b2cal.core.files import atomic_write_bytes, md5sum
from b2cal.core.iov import ExpRun, IoV
from b2cal.errors import B2CalError

DATABASE_TXT = "database.txt"
#: The folder, beside a local database folder, of the payloads' provenance sidecars.
PROVENANCE_FOLDER = "provenance"
_LINE = re.compile(r"^dbstore/(?P<name>[A-Za-z]\w*) (?P<rev>\d+) (?P<iov>-?\d+,-?\d+,-?\d+,-?\d+)$")


def payload_bytes(doc: Mapping[str, Any]) -> bytes:
    """Canonical JSON of a payload: sorted keys, exact floats, no NaN, newline at the end."""
    try:
        text = json.dumps(doc, sort_keys=True, indent=1, allow_nan=False)
    except ValueError as exc:
        raise B2CalError(f"payload is not finite JSON: {exc}") from exc
    return (text + "\n").encode()


def payload_filename(name: str, revision: int, suffix: str = ".json") -> str:
    return f"dbstore_{name}_rev_{revision}{suffix}"


@dataclass(frozen=True)
class PayloadEntry:
    """One line of ``database.txt``: a payload revision and where it is valid."""

    name: str
    revision: int
    iov: IoV
    path: Path

    def line(self) -> str:
        return f"dbstore/{self.name} {self.revision} {self.iov}"

    def read_bytes(self) -> bytes:
        try:
            return self.path.read_bytes()
        except OSError as exc:
            raise B2CalError(f"payload file missing for {self.line()}: {self.path}") from exc

    def read(self) -> dict[str, Any]:
        doc = json.loads(self.read_bytes())
        if not isinstance(doc, dict):
            raise B2CalError(f"payload file {self.path} does not hold a JSON object")
        return doc

    @property
    def checksum(self) -> str:
        return md5sum(self.read_bytes())


class LocalDatabase:
    """A read view of one local database directory (lookups by name and run)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.entries = read_database_txt(self.directory)
        self._docs: dict[tuple[str, int], dict[str, Any]] = {}

    def find(self, name: str, exprun: ExpRun) -> PayloadEntry | None:
        """The entry of ``name`` whose IoV contains ``exprun`` (the last listed one wins)."""
        for entry in reversed(self.entries):
            if entry.name == name and entry.iov.contains(exprun):
                return entry
        return None

    def payload(self, name: str, exprun: ExpRun) -> dict[str, Any] | None:
        entry = self.find(name, exprun)
        if entry is None:
            return None
        key = (entry.name, entry.revision)
        if key not in self._docs:
            self._docs[key] = entry.read()
        return self._docs[key]


def provenance_path(payload_file: Path) -> Path:
    """Where the provenance sidecar of a payload file is: ``../provenance/<same name>``.

    Provenance lives beside the payload, never inside it, so identical constants give
    identical files and checksums whatever run produced them.
    """
    return payload_file.parent.parent / PROVENANCE_FOLDER / payload_file.name


def read_database_txt(directory: Path) -> list[PayloadEntry]:
    """Parse ``directory/database.txt``; a missing file is an empty database."""
    path = Path(directory) / DATABASE_TXT
    if not path.exists():
        return []
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise B2CalError(f"{path} is not a database.txt: not UTF-8 text") from None
    entries = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            raise B2CalError(f"{path}:{number}: not a database.txt line: {line!r}")
        name, rev = match["name"], int(match["rev"])
        suffix = ".json"
        for candidate in (".json", ".root"):
            if (path.parent / payload_filename(name, rev, candidate)).exists():
                suffix = candidate
                break
        file = path.parent / payload_filename(name, rev, suffix)
        entries.append(PayloadEntry(name, rev, IoV.parse(match["iov"]), file))
    return entries


def write_local_database(
    directory: Path, payloads: Iterable[tuple[str, IoV, Mapping[str, Any]]]
) -> list[PayloadEntry]:
    """Write payloads (name, IoV, constants) as a fresh local database in ``directory``.

    Revisions are numbered from 1 per name in order of IoV start. Files are written atomically
    and ``database.txt`` last, so a reader never sees a line whose file is not complete.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    by_name: dict[str, list[tuple[IoV, Mapping[str, Any]]]] = {}
    for name, iov, doc in payloads:
        by_name.setdefault(name, []).append((iov, doc))
    entries: list[PayloadEntry] = []
    for name in sorted(by_name):
        ordered = sorted(by_name[name], key=lambda item: item[0].first)
        for revision, (iov, doc) in enumerate(ordered, start=1):
            path = directory / payload_filename(name, revision)
            atomic_write_bytes(path, payload_bytes(doc))
            entries.append(PayloadEntry(name, revision, iov, path))
    entries.sort(key=lambda e: (e.iov.first, e.name))
    text = "".join(entry.line() + "\n" for entry in entries)
    atomic_write_bytes(directory / DATABASE_TXT, text.encode())
    return entries
