"""What the calibration group does with the conditions database, on any store.

* **upload** a calibration output (``outputdb/``) into a staging tag — idempotent, so a retry
  after a crash is safe; each payload keeps the provenance written beside it;
* **import** / **export** basf2 local databases (``database.txt`` + payload files, copied as
  they are);
* **promote** a VALIDATED staging tag into a RUNNING tag from a given run;
* **diff** two tags.

Promotion and state changes are deliberate actions of the calibration coordinator; nothing here
runs on its own.

Nothing here checks a tag's state before writing to it: the store checks it inside the write
(``write_iovs(..., state=OPEN)`` for uploads and imports; promotion is the store's own
:meth:`~b2cal.cdb.store.ConditionsStore.promote`, decided by
:func:`b2cal.cdb.rules.plan_promotion`), so the state cannot change between check and write.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from b2cal.cdb.model import Payload, PayloadIoV, TagState
from b2cal.cdb.rules import IoVChange, plan_promotion
from b2cal.cdb.store import ConditionsStore, NewPayloadIoV
from b2cal.core.files import atomic_write_bytes
from b2cal.core.iov import ExpRun, IoV
from b2cal.core.localdb import (
    DATABASE_TXT,
    PayloadEntry,
    payload_filename,
    provenance_path,
    read_database_txt,
)
from b2cal.errors import CdbError, TagExists

#: ROOT files start with these bytes; everything else b2cal writes is JSON.
ROOT_MAGIC = b"root"


def read_local_database(directory: Path) -> list[NewPayloadIoV]:
    """The payloads of a basf2-style local database, with provenance sidecars if present.

    A sidecar's checksum is the checksum the payload file must have: a file changed after the
    calibration wrote it is refused (ChecksumMismatch) rather than uploaded.
    """
    directory = Path(directory)
    if not (directory / DATABASE_TXT).is_file():
        raise CdbError(f"{directory} is not a local database: no {DATABASE_TXT}")
    entries = read_database_txt(directory)
    if not entries:
        raise CdbError(f"{directory / DATABASE_TXT} lists no payload")
    return [_new_payload(directory, entry) for entry in entries]


def _new_payload(directory: Path, entry: PayloadEntry) -> NewPayloadIoV:
    sidecar = provenance_path(entry.path)
    provenance: dict[str, Any] = {}
    expected = None
    if sidecar.is_file():
        provenance = json.loads(sidecar.read_text())
        expected = provenance.get("checksum")
    provenance.setdefault("source", f"{directory.resolve()}:{entry.line()}")
    return NewPayloadIoV(entry.name, entry.read_bytes(), entry.iov, provenance, expected)


def upload(store: ConditionsStore, outputdb: Path, tag: str) -> IoVChange:
    """Put a calibration output into an OPEN staging tag, in one transaction.

    Uploading the same output again changes nothing (same checksums, same IoVs). A RUNNING tag
    changes only by promotion, which checks more.
    """
    return store.write_iovs(tag, read_local_database(outputdb), state=TagState.OPEN)


def import_local_database(
    store: ConditionsStore, directory: Path, tag: str, description: str = ""
) -> IoVChange:
    """Import a basf2 local database into ``tag``, creating the tag (OPEN) if it is new."""
    entries = read_local_database(directory)
    if tag not in {t.name for t in store.tags()}:
        with contextlib.suppress(TagExists):  # another import created it meanwhile: fine
            store.create_tag(tag, description or f"imported from {Path(directory).resolve()}")
    return store.write_iovs(tag, entries, state=TagState.OPEN)


def export_local_database(
    store: ConditionsStore,
    tag: str,
    directory: Path,
    within: IoV | None = None,
    select: Callable[[PayloadIoV], bool] | None = None,
) -> int:
    """Write ``tag`` as a basf2 local database: payload files copied as they are.

    Files are named by the store's revisions (``dbstore_<Name>_rev_<revision>.<json|root>``);
    ``database.txt`` is written last. With ``within``, only the IoVs that overlap it are
    written (a request's input tags, cut to its runs); with ``select``, only those it accepts
    (the payloads one calibration made, by their provenance). Returns the number of IoVs
    written.
    """
    directory = Path(directory)
    if (directory / DATABASE_TXT).exists():
        raise CdbError(f"{directory} already holds a {DATABASE_TXT}; export into a new folder")
    entries = [
        e
        for e in store.iovs(tag)
        if (within is None or e.iov.overlaps(within)) and (select is None or select(e))
    ]
    written: set[tuple[str, int]] = set()
    lines = []
    for entry in sorted(entries, key=lambda e: (e.iov.first, e.name)):
        payload = entry.payload
        if (payload.name, payload.revision) not in written:
            data = store.payload_data(payload)
            suffix = ".root" if data.startswith(ROOT_MAGIC) else ".json"
            path = directory / payload_filename(payload.name, payload.revision, suffix)
            atomic_write_bytes(path, data)
            written.add((payload.name, payload.revision))
        lines.append(f"dbstore/{payload.name} {payload.revision} {entry.iov}\n")
    atomic_write_bytes(directory / DATABASE_TXT, "".join(lines).encode())
    return len(lines)


def promote(store: ConditionsStore, staging: str, running: str, start: ExpRun) -> IoVChange:
    """Merge a VALIDATED staging tag into a RUNNING tag from run ``start`` on.

    The staging payloads valid at or after ``start`` are appended to the running tag, the
    first of each name starting at ``start`` at the earliest; the running tag's open-ended
    IoVs are closed just before (by the RUNNING tag's append rule). A staging tag with gaps or
    overlaps is refused: it would leave runs without constants, or ambiguous ones; so is one
    that would leave runs the running tag covers without constants
    (:func:`b2cal.cdb.rules.plan_promotion`, called by the store inside its write).
    """
    return store.promote(staging, running, start)


def preview_promotion(
    store: ConditionsStore, staging: str, running: str, start: ExpRun
) -> IoVChange:
    """What :func:`promote` would change, or why it would be refused, changing nothing: the
    diff a coordinator looks at before promoting."""
    return plan_promotion(
        store.tag(staging), store.iovs(staging), store.tag(running), store.iovs(running), start
    )


@dataclass(frozen=True)
class DiffRow:
    """One payload name and IoV where two tags differ (None: absent from that tag)."""

    name: str
    iov: IoV
    a: Payload | None
    b: Payload | None

    @property
    def kind(self) -> str:
        if self.a is None:
            return "only in B"
        if self.b is None:
            return "only in A"
        return "different payload"


def diff_tags(store: ConditionsStore, a: str, b: str) -> list[DiffRow]:
    """Where ``a`` and ``b`` differ, keyed by (payload name, IoV)."""
    left = {(e.name, e.iov): e.payload for e in store.iovs(a)}
    right = {(e.name, e.iov): e.payload for e in store.iovs(b)}
    rows = []
    for key in sorted(set(left) | set(right), key=lambda k: (k[0], k[1].first, str(k[1]))):
        pa, pb = left.get(key), right.get(key)
        if pa is None or pb is None or pa.checksum != pb.checksum:
            rows.append(DiffRow(key[0], key[1], pa, pb))
    return rows
