"""What the calibration group does with the conditions database, on any store.

* **upload** a calibration output (``outputdb/``) into a staging tag — idempotent, so a retry
  after a crash is safe; each payload keeps the provenance written beside it;
* **import** / **export** basf2 local databases (``database.txt`` + payload files, copied as
  they are);
* **promote** a VALIDATED staging tag into a RUNNING tag from a given run;
* **diff** two tags.

Promotion and state changes are deliberate actions of the calibration coordinator; nothing here
runs on its own.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from b2cal.cdb.model import Payload, PayloadIoV, TagState
from b2cal.cdb.rules import IoVChange, gaps_and_overlaps
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
from b2cal.errors import CdbError, ForbiddenChange

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
    """Put a calibration output into a staging tag, in one transaction.

    Uploading the same output again changes nothing (same checksums, same IoVs).
    """
    entries = read_local_database(outputdb)
    _check_staging(store, tag)
    return store.write_iovs(tag, entries)


def _check_staging(store: ConditionsStore, tag: str) -> None:
    """Uploads go into OPEN tags only: a RUNNING tag changes by promotion, which checks more."""
    state = store.tag(tag).state
    if state is not TagState.OPEN:
        raise ForbiddenChange(
            f"global tag {tag} is {state.value}: uploads and imports go into an OPEN (staging) "
            "tag; a RUNNING tag changes only by promotion"
        )


def import_local_database(
    store: ConditionsStore, directory: Path, tag: str, description: str = ""
) -> IoVChange:
    """Import a basf2 local database into ``tag``, creating the tag (OPEN) if it is new."""
    entries = read_local_database(directory)
    if tag not in {t.name for t in store.tags()}:
        store.create_tag(tag, description or f"imported from {Path(directory).resolve()}")
    _check_staging(store, tag)
    return store.write_iovs(tag, entries)


def export_local_database(store: ConditionsStore, tag: str, directory: Path) -> int:
    """Write ``tag`` as a basf2 local database: payload files copied as they are.

    Files are named by the store's revisions (``dbstore_<Name>_rev_<revision>.<json|root>``);
    ``database.txt`` is written last. Returns the number of IoVs written.
    """
    directory = Path(directory)
    if (directory / DATABASE_TXT).exists():
        raise CdbError(f"{directory} already holds a {DATABASE_TXT}; export into a new folder")
    entries = store.iovs(tag)
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
    overlaps is refused: it would leave runs without constants, or ambiguous ones.
    """
    source, target = store.tag(staging), store.tag(running)
    if source.state is not TagState.VALIDATED:
        raise ForbiddenChange(
            f"global tag {staging} is {source.state.value}: only a VALIDATED tag is promoted"
        )
    if target.state is not TagState.RUNNING:
        raise ForbiddenChange(
            f"global tag {running} is {target.state.value}: promotion goes into a RUNNING tag"
        )
    entries = store.iovs(staging)
    problems = gaps_and_overlaps(entries)
    if problems:
        raise CdbError(f"global tag {staging} cannot be promoted: {'; '.join(problems)}")
    window = IoV(start.exp, start.run, -1, -1)
    new = [
        NewPayloadIoV(
            entry.name,
            store.payload_data(entry.payload),
            _clip(entry.iov, start),
            entry.payload.provenance,
            entry.payload.checksum,
        )
        for entry in entries
        if entry.iov.overlaps(window)
    ]
    if not new:
        raise CdbError(
            f"global tag {staging} has no payload valid from experiment {start.exp} run "
            f"{start.run} on"
        )
    _check_coverage_kept(store.iovs(running), new, staging, running)
    return store.write_iovs(running, new)


def _check_coverage_kept(
    current: Sequence[PayloadIoV], new: Sequence[NewPayloadIoV], staging: str, running: str
) -> None:
    """Refuse a promotion that would leave runs the RUNNING tag covers without a payload.

    Closing a RUNNING tag's open-ended IoV is only right when what replaces it is open-ended
    too; a staging tag that ends at some run would otherwise take every later run's constants
    away (a recalibration of past runs is a new tag, not a promotion).
    """
    for name in sorted({entry.name for entry in new}):
        open_now = any(e.name == name and e.iov.is_open_ended for e in current)
        last = max((e.iov for e in new if e.name == name), key=lambda iov: iov.first)
        if open_now and not last.is_open_ended:
            raise ForbiddenChange(
                f"promoting {staging} would leave {name} without payload after {last} in "
                f"{running}, whose IoV is open-ended now; promote a staging tag whose last IoV "
                "is open-ended (b2cal caf run --open-ended)"
            )


def _clip(iov: IoV, start: ExpRun) -> IoV:
    """``iov`` without the runs before ``start``."""
    if iov.first >= start:
        return iov
    return IoV(start.exp, start.run, iov.exp_high, iov.run_high)


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
