"""The embedded conditions database: three SQL tables plus payload files on disk.

The same code runs on SQLite (a laptop, the tests), PostgreSQL and MariaDB (a site), so it keeps
to what all three do alike: the tables of :mod:`b2cal.cdb.schema`, engines from
:mod:`b2cal.sql.engine`, sorting and JSON matching in Python. Payload files are
content-addressed (``<md5[:2]>/<md5>`` under the payload directory): identical constants are
stored once, and a file that changed on disk is noticed because its name is its checksum.

Every write is one transaction that first locks the global tag's row, then asks
:mod:`b2cal.cdb.rules` what the write means (the tag's state included: a write names the state
it expects), and only then changes anything, so a refused request leaves the database as it was
and no state change can slip in between the check and the write. A promotion locks both tags'
rows, in name order so that two writers can never wait for each other in a circle (deadlock),
and reads both tags' states and IoVs in the same transaction that appends to the running tag.
Two writers racing to store the same new payload are kept apart by the unique constraints: the
loser's transaction fails, is retried (:func:`b2cal.sql.engine.in_transaction`), and then finds
the winner's payload.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, contains_eager

from b2cal.cdb.model import GlobalTag, Payload, PayloadIoV, TagState, by_name_and_start
from b2cal.cdb.rules import (
    IoVChange,
    check_tag_name,
    check_transition,
    plan_add,
    plan_promotion,
    plan_remove,
)
from b2cal.cdb.schema import (
    LABEL,
    MIGRATIONS,
    GlobalTagRow,
    PayloadIoVRow,
    PayloadRow,
    creation_time,
)
from b2cal.cdb.store import (
    ConditionsStore,
    NewPayloadIoV,
    provenance_query,
    read_payload_file,
    with_provenance,
)
from b2cal.core.files import atomic_write_bytes, md5sum
from b2cal.core.iov import ExpRun, IoV
from b2cal.errors import CdbError, TagExists, UnknownPayload, UnknownTag
from b2cal.sql.engine import WRITE, SqlDatabase, in_transaction, make_engine
from b2cal.sql.migrations import upgrade_schema

T = TypeVar("T")

_CHECKSUM = re.compile(r"[0-9a-f]{32}")

_Key = tuple[str, str, IoV]


@dataclass
class _Contents:
    """A tag's row and its IoV rows, as the rules see them and as the store changes them."""

    row: GlobalTagRow
    rows: dict[_Key, PayloadIoVRow]

    @property
    def tag(self) -> GlobalTag:
        return self.row.value()

    @property
    def entries(self) -> list[PayloadIoV]:
        return by_name_and_start(row.value(self.row.name) for row in self.rows.values())


@dataclass(frozen=True)
class _Upload:
    """A new entry after its checks: data, md5 and provenance as JSON will give it back."""

    entry: NewPayloadIoV
    checksum: str
    provenance: dict[str, Any]

    @classmethod
    def checked(cls, entry: NewPayloadIoV) -> _Upload:
        return cls(entry, entry.verified_checksum(), entry.stored_provenance())

    @property
    def key(self) -> tuple[str, str]:
        return (self.entry.name, self.checksum)


# --- queries inside a transaction ---------------------------------------------------------
def _tag_row(session: Session, name: str, lock: bool = False) -> GlobalTagRow:
    """The tag's row; with ``lock``, held until the transaction ends (writers queue on it)."""
    query = select(GlobalTagRow).where(GlobalTagRow.name == name)
    row = session.scalar(query.with_for_update() if lock else query)
    if row is None:
        raise UnknownTag(name)
    return row


def _iov_rows(session: Session, tag: GlobalTagRow, name: str | None = None) -> list[PayloadIoVRow]:
    query = (
        select(PayloadIoVRow)
        .join(PayloadIoVRow.payload)
        .options(contains_eager(PayloadIoVRow.payload))
        .where(PayloadIoVRow.tag_id == tag.id)
    )
    if name is not None:
        query = query.where(PayloadRow.name == name)
    return list(session.scalars(query))


def _locked_contents(session: Session, tag: str) -> _Contents:
    row = _tag_row(session, tag, lock=True)
    rows = _iov_rows(session, row)
    return _Contents(row, {r.value(tag).key: r for r in rows})


def _new_tag(session: Session, name: str, description: str) -> GlobalTagRow:
    """Insert an OPEN tag; a name taken meanwhile fails at flush and the write is retried."""
    if session.scalar(select(GlobalTagRow.id).where(GlobalTagRow.name == name)) is not None:
        raise TagExists(name)
    row = GlobalTagRow(
        name=name, state=TagState.OPEN.value, description=description, created=creation_time()
    )
    session.add(row)
    session.flush()
    return row


def _payload_rows(
    session: Session, uploads: Sequence[_Upload]
) -> dict[tuple[str, str], PayloadRow]:
    """Every upload's payload row: the stored one, or a new one with the next free revision.

    New rows are not added to the session here: they are stored only if the rules accept the
    write (by cascade from the IoV rows that use them).
    """
    rows: dict[tuple[str, str], PayloadRow] = {}
    next_revision: dict[str, int] = {}
    for upload in uploads:
        name, checksum = upload.key
        if upload.key in rows:
            continue
        stored = session.scalar(
            select(PayloadRow).where(PayloadRow.name == name, PayloadRow.checksum == checksum)
        )
        if stored is None:
            if name not in next_revision:
                last = session.scalar(
                    select(func.max(PayloadRow.revision)).where(PayloadRow.name == name)
                )
                next_revision[name] = (last or 0) + 1
            stored = PayloadRow(
                name=name,
                revision=next_revision[name],
                checksum=checksum,
                size=len(upload.entry.data),
                provenance=upload.provenance,
                created=creation_time(),
            )
            next_revision[name] += 1
        rows[upload.key] = stored
    return rows


def _apply(
    session: Session,
    contents: _Contents,
    change: IoVChange,
    payloads: dict[tuple[str, str], PayloadRow],
) -> None:
    """Carry out a change the rules have accepted."""
    for old, iov in change.close:
        contents.rows[old.key].iov = iov
    for entry in change.remove:
        session.delete(contents.rows[entry.key])
    for payload, iov in change.add:
        row = PayloadIoVRow(
            tag_id=contents.row.id, payload=payloads[(payload.name, payload.checksum)]
        )
        row.iov = iov
        session.add(row)


# --- the store --------------------------------------------------------------------------------
class EmbeddedStore(ConditionsStore):
    """A conditions database in an SQL database of b2cal's own, with payload files on disk.

    Opening it upgrades the schema to the newest revision, so a new database needs no setup.
    """

    def __init__(self, url: str, payload_dir: Path, *, create: bool = True) -> None:
        self._database = SqlDatabase(url, LABEL)
        self.payload_dir = Path(payload_dir)
        self._engine = make_engine(self._database, create=create)
        self._writer = self._engine.execution_options(**{WRITE: True})
        try:
            upgrade_schema(self._engine, MIGRATIONS, self._database)
        except BaseException:
            self._engine.dispose()
            raise

    def __repr__(self) -> str:
        return f"EmbeddedStore({self._database.masked_url!r}, {str(self.payload_dir)!r})"

    @property
    def url(self) -> str:
        """The database URL as given (with its password; messages use a masked form)."""
        return self._database.url

    @property
    def engine(self) -> Engine:
        return self._engine

    def close(self) -> None:
        self._engine.dispose()

    def _run(self, work: Callable[[Session], T], write: bool = False) -> T:
        """``work`` in one transaction (see :func:`b2cal.sql.engine.in_transaction`)."""
        return in_transaction(self._writer if write else self._engine, self._database, work)

    # --- global tags ----------------------------------------------------------------------
    def tags(self) -> list[GlobalTag]:
        rows = self._run(lambda s: [r.value() for r in s.scalars(select(GlobalTagRow))])
        return sorted(rows, key=lambda t: t.name)

    def tag(self, name: str) -> GlobalTag:
        return self._run(lambda s: _tag_row(s, name).value())

    def create_tag(self, name: str, description: str = "") -> GlobalTag:
        check_tag_name(name)
        return self._run(lambda s: _new_tag(s, name, description).value(), write=True)

    def set_state(self, name: str, state: TagState) -> GlobalTag:
        def work(session: Session) -> GlobalTag:
            row = _tag_row(session, name, lock=True)
            check_transition(row.value(), state)
            row.state = state.value
            return row.value()

        return self._run(work, write=True)

    def clone_tag(self, source: str, target: str, description: str = "") -> GlobalTag:
        check_tag_name(target)

        def work(session: Session) -> GlobalTag:
            rows = _iov_rows(session, _tag_row(session, source))
            new = _new_tag(session, target, description)
            for row in rows:
                copy = PayloadIoVRow(tag_id=new.id, payload_id=row.payload_id)
                copy.iov = row.iov
                session.add(copy)
            return new.value()

        return self._run(work, write=True)

    # --- payloads and IoVs ----------------------------------------------------------------
    def iovs(self, tag: str, name: str | None = None) -> list[PayloadIoV]:
        def work(session: Session) -> list[PayloadIoV]:
            return [r.value(tag) for r in _iov_rows(session, _tag_row(session, tag), name)]

        return by_name_and_start(self._run(work))

    def write_iovs(
        self, tag: str, entries: Sequence[NewPayloadIoV], *, state: TagState
    ) -> IoVChange:
        uploads = [_Upload.checked(entry) for entry in entries]
        data = {upload.checksum: upload.entry.data for upload in uploads}

        def work(session: Session) -> IoVChange:
            contents = _locked_contents(session, tag)
            payloads = _payload_rows(session, uploads)
            wanted = [(payloads[u.key].value(), u.entry.iov) for u in uploads]
            change = plan_add(contents.tag, contents.entries, wanted, state=state)
            for payload, _ in change.add:
                self._keep_file(payload.checksum, data[payload.checksum])
            _apply(session, contents, change, payloads)
            return change

        return self._run(work, write=True)

    def promote(self, staging: str, running: str, start: ExpRun) -> IoVChange:
        def work(session: Session) -> IoVChange:
            locked = {name: _locked_contents(session, name) for name in sorted({staging, running})}
            source, target = locked[staging], locked[running]
            change = plan_promotion(source.tag, source.entries, target.tag, target.entries, start)
            for payload, _ in change.add:
                self.payload_data(payload)  # its file must be there, unchanged
            payloads = {key[:2]: row.payload for key, row in source.rows.items()}
            _apply(session, target, change, payloads)
            return change

        return self._run(work, write=True)

    def remove_iovs(self, tag: str, entries: Sequence[PayloadIoV]) -> IoVChange:
        def work(session: Session) -> IoVChange:
            contents = _locked_contents(session, tag)
            change = plan_remove(contents.tag, contents.entries, entries)
            _apply(session, contents, change, {})
            return change

        return self._run(work, write=True)

    def payload(self, name: str, revision: int) -> Payload:
        def work(session: Session) -> Payload:
            query = select(PayloadRow).where(
                PayloadRow.name == name, PayloadRow.revision == revision
            )
            row = session.scalar(query)
            if row is None:
                raise UnknownPayload(name, revision)
            return row.value()

        return self._run(work)

    def find_payloads(self, name: str | None = None, **provenance: Any) -> list[Payload]:
        wanted = provenance_query(provenance)

        def work(session: Session) -> list[Payload]:
            query = select(PayloadRow)
            if name is not None:
                query = query.where(PayloadRow.name == name)
            return [r.value() for r in session.scalars(query)]

        return with_provenance(self._run(work), wanted)

    # --- payload files --------------------------------------------------------------------
    def payload_file(self, checksum: str) -> Path:
        """Where the payload file with this md5 is kept."""
        if not _CHECKSUM.fullmatch(checksum):
            raise CdbError(f"not an md5 checksum: {checksum!r}")
        return self.payload_dir / checksum[:2] / checksum

    def payload_data(self, payload: Payload) -> bytes:
        path = self.payload_file(payload.checksum)
        try:
            return read_payload_file(path, payload)
        except FileNotFoundError:
            raise CdbError(
                f"payload file of {payload.name} revision {payload.revision} is missing: {path}"
            ) from None

    def _keep_file(self, checksum: str, data: bytes) -> None:
        """Store the payload file, unless a correct one is there (a damaged one is replaced)."""
        path = self.payload_file(checksum)
        try:
            if path.is_file() and md5sum(path.read_bytes()) == checksum:
                return
            atomic_write_bytes(path, data)
        except OSError as exc:
            raise CdbError(f"cannot store payload file {path}: {exc}") from exc
