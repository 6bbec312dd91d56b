"""The nopayloaddb server as a :class:`~b2cal.cdb.store.ConditionsStore`.

:class:`RestStore` reads tags, IoVs and states through the API, decides every write with
b2cal's rules (:mod:`b2cal.cdb.rules`) before it sends anything, stores payload files in the
shared :class:`~b2cal.cdb.nopayloaddb.payload_directory.PayloadDirectory` and leaves the
requests of a write to :class:`~b2cal.cdb.nopayloaddb.writes.TagWriter`. The server's lookup
``payloadiovs/`` returns the IoV with the latest start at or before the run, ignoring its end:
:meth:`RestStore.lookup` checks the end itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Unpack

from b2cal.cdb.model import GlobalTag, Payload, PayloadIoV, TagState, by_name_and_start
from b2cal.cdb.nopayloaddb.bookkeeping import StateBook
from b2cal.cdb.nopayloaddb.mapping import (
    STATE_TAG,
    STATUS_OF,
    ServerIoV,
    StateRecord,
    TagView,
    check_payload_name,
    exact_state,
    iov_from_server,
    is_payload_name,
    state_type,
    url_revision,
)
from b2cal.cdb.nopayloaddb.payload_directory import PayloadDirectory
from b2cal.cdb.nopayloaddb.rest import ApiOptions, NopayloaddbApi, path_segment
from b2cal.cdb.nopayloaddb.writes import TagWriter
from b2cal.cdb.rules import (
    IoVChange,
    check_state,
    check_tag_name,
    check_transition,
    plan_add,
    plan_promotion,
    plan_remove,
)
from b2cal.cdb.store import (
    ConditionsStore,
    NewPayloadIoV,
    provenance_query,
    with_provenance,
)
from b2cal.core.iov import ExpRun
from b2cal.errors import (
    CdbError,
    ForbiddenChange,
    NopayloaddbError,
    NoPayloadValid,
    TagExists,
    UnknownPayload,
    UnknownTag,
)


def _created(text: Any) -> datetime | None:
    """Server times are naive UTC (Django with USE_TZ off and TIME_ZONE UTC)."""
    if not isinstance(text, str):
        return None
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class RestStore(ConditionsStore):
    """A :class:`ConditionsStore` on a nopayloaddb server (package doc: mapping, workarounds).

    ``base_url`` is the server (``https://cdb.example.org``) or its API
    (``…/api/cdb_rest/``). ``payloads`` is the payload directory every client of this server
    shares (default: ``nopayloaddb/`` under b2cal's payload directory, ``B2CAL_CDB_PAYLOADS``).
    ``state_tag`` is the bookkeeping tag of exact states. The other options are
    :class:`~b2cal.cdb.nopayloaddb.rest.NopayloaddbApi`'s: ``token`` (sent as a bearer token on
    writes), ``transport`` (replaces httpx's, for tests), ``verify``, ``timeout``.
    """

    def __init__(
        self,
        base_url: str,
        *,
        payloads: Path | None = None,
        state_tag: str = STATE_TAG,
        **options: Unpack[ApiOptions],
    ) -> None:
        if payloads is None:
            from b2cal.settings import Settings

            payloads = Settings().cdb_payload_dir / "nopayloaddb"
        self.api = NopayloaddbApi(base_url, **options)
        self.files = PayloadDirectory(payloads)
        self.book = StateBook(self.api, state_tag)
        self._writer = TagWriter(self.api, self.book)

    def __repr__(self) -> str:
        return f"RestStore({self.api.root!r}, payloads={str(self.files.root)!r})"

    def close(self) -> None:
        self.api.close()

    # --- reading ------------------------------------------------------------------------------
    def _server_tag(self, name: str, light: bool) -> dict[str, Any]:
        if name == self.book.tag:
            raise UnknownTag(name, "b2cal's own bookkeeping tag")
        try:
            path = f"globalTag/{path_segment(name)}"
            answer: dict[str, Any] = self.api.get(path, light=1) if light else self.api.get(path)
        except NopayloaddbError as exc:
            if exc.status == 404:
                raise UnknownTag(name) from None
            raise
        return answer

    def _value(self, doc: dict[str, Any], record: StateRecord | None) -> tuple[GlobalTag, str]:
        status = doc["status"]["name"] if isinstance(doc["status"], dict) else str(doc["status"])
        state = exact_state(status, record)
        description = record.description if record is not None else ""
        return GlobalTag(doc["name"], state, description, _created(doc.get("created"))), status

    def _read(self, name: str, contents: bool = True, state: bool = True) -> TagView:
        """The tag, with its lists and IoVs if ``contents``, with its exact state if ``state``
        (one more request; without it the state is the server status's default)."""
        doc = self._server_tag(name, light=not contents)
        record = self.book.latest_of(name) if state else None
        tag, status = self._value(doc, record)
        view = TagView(tag, status, record)
        for plist in doc.get("payload_lists", []) if contents else []:
            ptype = plist["payload_type"]
            view.lists[ptype] = plist["name"]
            for row in plist["payload_iov"]:
                payload = self._described(ptype, row["payload_url"], row["checksum"])
                view.urls.setdefault((ptype, payload.checksum), row["payload_url"])
                iov = iov_from_server(
                    row["major_iov"], row["minor_iov"], row["major_iov_end"], row["minor_iov_end"]
                )
                view.entries.append(PayloadIoV(name, payload, iov))
        view.entries = by_name_and_start(view.entries)
        return view

    def _described(self, name: str, url: str, checksum: str) -> Payload:
        """The payload an IoV on the server points to, with size and provenance from its file.

        IoVs written by other tools (another URL form) get revision 0; their bytes are not in
        the payload directory.
        """
        revision = url_revision(name, url)
        if revision is None:
            return Payload(name, 0, checksum, 0)
        return self.files.payload(name, revision) or Payload(name, revision, checksum, 0)

    def tags(self) -> list[GlobalTag]:
        records = self.book.latest()
        found = [
            self._value(doc, records.get(state_type(doc["name"])))[0]
            for doc in self.api.get("globalTags")
            if doc["name"] != self.book.tag
        ]
        return sorted(found, key=lambda t: t.name)

    def tag(self, name: str) -> GlobalTag:
        return self._read(name, contents=False).tag

    def iovs(self, tag: str, name: str | None = None) -> list[PayloadIoV]:
        entries = self._read(tag, state=False).entries
        return [e for e in entries if name is None or e.payload.name == name]

    def lookup(self, tags: Sequence[str], name: str, exprun: ExpRun) -> PayloadIoV:
        """The server's lookup, with the end of the IoV it returns checked here.

        The server answers the IoV with the latest start at or before the run even when it
        ended before that run. IoVs of one payload name never overlap in a tag (b2cal's rules;
        the server trims them too), so when that IoV has ended, none holds the run.
        """
        self.check_chain(tags)
        for tag in tags:
            for row in self.api.lookup(tag, exprun):
                if row["payload_type_name"] != name:
                    continue
                server = ServerIoV(
                    row["major_iov"], row["minor_iov"], row["major_iov_end"], row["minor_iov_end"]
                )
                if server.contains(exprun):
                    payload = self._described(name, row["payload_url"], row["checksum"])
                    return PayloadIoV(tag, payload, iov_from_server(*server))
        raise NoPayloadValid(tags, name, exprun.exp, exprun.run)

    def payload(self, name: str, revision: int) -> Payload:
        found = self.files.payload(name, revision) if is_payload_name(name) else None
        if found is None:
            raise UnknownPayload(name, revision)
        return found

    def payload_data(self, payload: Payload) -> bytes:
        return self.files.data(payload)

    def find_payloads(self, name: str | None = None, **provenance: Any) -> list[Payload]:
        if name is not None and not is_payload_name(name):
            return []
        return with_provenance(self.files.all(name), provenance_query(provenance))

    # --- global tags ------------------------------------------------------------------------
    def _absent(self, name: str) -> None:
        check_tag_name(name)
        if name == self.book.tag:
            raise CdbError(f"global tag name {name!r} is b2cal's bookkeeping tag on this server")
        try:
            self._server_tag(name, light=True)
        except UnknownTag:
            return
        raise TagExists(name)

    def create_tag(self, name: str, description: str = "") -> GlobalTag:
        self._absent(name)
        record = StateRecord(TagState.OPEN, TagState.OPEN, description)
        self.book.append(name, record)
        doc = self.api.post(
            "gt", {"name": name, "status": STATUS_OF[TagState.OPEN], "author": "b2cal"}
        )
        return self._value(doc, record)[0]

    def clone_tag(self, source: str, target: str, description: str = "") -> GlobalTag:
        self._server_tag(source, light=True)
        self._absent(target)
        record = StateRecord(TagState.OPEN, TagState.OPEN, description)
        self.book.append(target, record)
        doc = self.api.post(f"cloneGlobalTag/{path_segment(source)}/{path_segment(target)}")
        return self._value(doc, record)[0]

    def set_state(self, name: str, state: TagState) -> GlobalTag:
        view = self._read(name, contents=False)
        current = view.tag
        if current.state is not state or view.status == STATUS_OF[state]:
            check_transition(current, state)
            self.book.append(
                name, StateRecord(current.state, state, current.description), view.record
            )
        if view.status != STATUS_OF[state]:  # also completes a change a crash interrupted
            self.api.set_status(name, STATUS_OF[state])
        return GlobalTag(name, state, current.description, current.created)

    # --- payload IoVs ---------------------------------------------------------------------------
    def _recheck(self, view: TagView, state: TagState, unchanged: bool = False) -> None:
        """Read the tag's state again, right before a write becomes visible: it must still be
        ``state`` (and, if ``unchanged``, have had no state change at all since ``view`` was
        read, as the latest state record tells). ``view`` takes the status and record read."""
        fresh = self._read(view.tag.name, contents=False)
        check_state(fresh.tag, state)
        if unchanged and fresh.record != view.record:
            raise ForbiddenChange(
                f"global tag {view.tag.name} changed state while this write was prepared; "
                "nothing was written, run it again"
            )
        view.status, view.record = fresh.status, fresh.record

    def write_iovs(
        self, tag: str, entries: Sequence[NewPayloadIoV], *, state: TagState
    ) -> IoVChange:
        checked = []
        for entry in entries:
            check_payload_name(entry.name)
            checked.append((entry, entry.verified_checksum(), entry.stored_provenance()))
        view = self._read(tag)
        wanted = []
        for entry, checksum, provenance in checked:
            stored = self.files.find(entry.name, checksum)
            # Not stored yet: revision 0 until the rules accept the write (then it is stored).
            wanted.append(
                (stored or Payload(entry.name, 0, checksum, len(entry.data), provenance), entry.iov)
            )
        change = plan_add(view.tag, view.entries, wanted, state=state)
        if change.empty:
            self._writer.relock(view)  # a retry after a crash while the tag was unlocked
            return change
        self._writer.check_iov_mode()
        # Store new payloads in the order of the entries, as revisions are numbered.
        adding = {(p.name, p.checksum) for p, _ in change.add}
        stored_now: dict[tuple[str, str], Payload] = {}
        for entry, checksum, provenance in checked:
            key = (entry.name, checksum)
            if key in adding and key not in stored_now:
                stored_now[key] = self.files.put(entry.name, entry.data, provenance)
        change = IoVChange(
            close=change.close,
            remove=change.remove,
            add=[(stored_now[(p.name, p.checksum)], iov) for p, iov in change.add],
        )
        self._writer.apply(view, change, lambda: self._recheck(view, state))
        return change

    def promote(self, staging: str, running: str, start: ExpRun) -> IoVChange:
        source, target = self._read(staging), self._read(running)
        change = plan_promotion(source.tag, source.entries, target.tag, target.entries, start)
        if change.empty:
            self._writer.relock(target)
            return change
        for payload, _ in change.add:
            self.files.data(payload)  # in the shared payload directory, unchanged

        def recheck() -> None:
            self._recheck(source, TagState.VALIDATED, unchanged=True)
            self._recheck(target, TagState.RUNNING)

        self._writer.check_iov_mode()
        self._writer.apply(target, change, recheck)
        return change

    def remove_iovs(self, tag: str, entries: Sequence[PayloadIoV]) -> IoVChange:
        view = self._read(tag)
        change = plan_remove(view.tag, view.entries, entries)
        if not change.empty:
            self._writer.check_iov_mode()
            self._writer.apply(view, change)
        return change
