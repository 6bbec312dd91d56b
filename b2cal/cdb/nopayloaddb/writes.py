"""Carrying out a write the rules accepted, on a server that has no transactions.

``piov_attach`` (add one IoV to a payload list) fails with an HTML 500 page when the new IoV
starts before or inside existing ones, splits an open-ended IoV in two when a closed IoV is
appended after it, and on a ``locked`` tag fails for nearly every append (or leaves the previous
open-ended IoV open); replacing a list of a locked tag is refused. ``bulk_piov`` drops checksum
and end and skips every check: it is not used. b2cal's rules (:mod:`b2cal.cdb.rules`) decide
every write first; the client then only ever attaches one IoV at the end of a list where the
server does exactly what the rules planned (:func:`single_append`), and otherwise builds a
complete new payload list for that payload name off to the side and attaches it in one
``pl_attach``, which atomically replaces the old list. A RUNNING (locked) tag is unlocked for
that, and locked again right after.

Crashes and retries
    A write is several HTTP requests, so it cannot be one transaction. Every step is
    idempotent and they are ordered so that nothing half-done is visible: payload files first
    (content-addressed), then payload types, then new payload lists built while attached to no
    tag, then one atomic attach per payload name. A crash can leave some payload names of a
    write done and others not, never part of one name's IoVs; running the same write again
    completes it without duplicates, since the rules skip IoVs already there. State changes
    write the state record before changing the server's status, and
    :func:`~b2cal.cdb.nopayloaddb.mapping.exact_state` reads an interrupted change as the state
    it came from (or, for RUNNING, as RUNNING while the tag is unlocked for an append); retrying
    the change completes it. Leftovers of an interrupted write (payload lists attached to no
    tag) are invisible and harmless.

State checks
    Nothing can be locked on the server, so the store reads the tag's state once to plan a
    write and once more, through the ``recheck`` of :meth:`TagWriter.apply`, after the
    invisible preparations and right before the first request that changes what the tag shows.
    A state change completed in the few requests after that is not seen
    (``docs/nopayloaddb.md``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from b2cal.cdb.model import PayloadIoV, TagState
from b2cal.cdb.nopayloaddb.bookkeeping import StateBook
from b2cal.cdb.nopayloaddb.mapping import (
    STATUS_OF,
    StateRecord,
    TagView,
    iov_to_server,
    payload_url,
)
from b2cal.cdb.nopayloaddb.rest import NopayloaddbApi
from b2cal.cdb.rules import IoVChange, apply
from b2cal.errors import CdbError, NopayloaddbError


def single_append(view: TagView, change: IoVChange, name: str) -> PayloadIoV | None:
    """The one new IoV of ``name`` if attaching it to the tag's list does exactly the change.

    That holds when it starts after every IoV of its list and either the last one ends before
    it, or the last one is being closed by it and it is open-ended itself: the server then
    trims the last IoV to end where the new one starts. Anything else (an insert, several IoVs,
    a removal, a closed IoV after an open-ended one, which the server would split) goes through
    a new list.
    """
    added = [(p, iov) for p, iov in change.add if p.name == name]
    if name not in view.lists or len(added) != 1:
        return None
    if any(e.payload.name == name for e in change.remove):
        return None
    payload, iov = added[0]
    if any(e.iov.first >= iov.first for e in view.entries if e.payload.name == name):
        return None
    if any(old.payload.name == name for old, _ in change.close) and not iov.is_open_ended:
        return None
    return PayloadIoV(view.tag.name, payload, iov)


class TagWriter:
    """Writes accepted changes to the tags of one server, keeping its state records."""

    def __init__(self, api: NopayloaddbApi, book: StateBook) -> None:
        self.api = api
        self.book = book
        self._mode_checked = False

    def check_iov_mode(self) -> None:
        """Refuse to write to a server whose IoV ends are not exclusive (``CDB_IOV_MODE``).

        The mapping and the trimming the client relies on are those of the default mode,
        ``continuous``; in ``discrete`` mode the server trims ends differently. The server
        shows its ``CDB_*`` settings (HTTP 404 for one left at its default); servers too old to
        have that endpoint only know continuous IoVs.
        """
        if self._mode_checked:
            return
        try:
            mode = self.api.get("user_settings/CDB_IOV_MODE/").get("CDB_IOV_MODE", "continuous")
        except NopayloaddbError as exc:
            if exc.status != 404:
                raise
            mode = "continuous"
        if mode != "continuous":
            raise CdbError(
                f"nopayloaddb at {self.api.root} runs with CDB_IOV_MODE={mode}; b2cal writes "
                "only to servers in the default mode, continuous (exclusive IoV ends)"
            )
        self._mode_checked = True

    def apply(
        self, view: TagView, change: IoVChange, recheck: Callable[[], None] | None = None
    ) -> None:
        """Carry out a change the rules accepted: invisible preparations, then one atomic step
        per payload name (a single appended IoV, or a whole new list replacing the old one).

        ``recheck`` runs after the preparations, right before the first request that changes
        what the tag shows: it reads again what the decision rests on (the tag's state) and
        raises to refuse the write after all. It may update ``view.status`` and
        ``view.record`` from what it read.
        """
        after = apply(view.entries, view.tag.name, change)
        names = sorted(
            {p.name for p, _ in change.add}
            | {old.payload.name for old, _ in change.close}
            | {e.payload.name for e in change.remove}
        )
        urls = dict(view.urls)
        urls.update({(p.name, p.checksum): payload_url(p) for p, _ in change.add})
        for name in names:
            if name not in view.lists:
                self.api.create_if_absent("pt", {"name": name})
        steps: list[tuple[str, PayloadIoV | None, str | None]] = []
        for name in names:
            single = single_append(view, change, name)
            if single is not None:
                steps.append((name, single, None))
            else:
                mine = [e for e in after if e.payload.name == name]
                steps.append((name, None, self._build_list(name, mine, urls)))
        if recheck is not None:
            recheck()
        with self._writable(view, unlock=any(name in view.lists for name in names)):
            for name, single, plist in steps:
                if single is not None:
                    self._attach(view.lists[name], single, urls)
                else:
                    self.api.put("pl_attach", {"payload_list": plist, "global_tag": view.tag.name})

    def relock(self, view: TagView) -> None:
        """Lock a RUNNING tag that is unlocked (for an append, or left so by a crash)."""
        locked = STATUS_OF[TagState.RUNNING]
        if view.tag.state is TagState.RUNNING and view.status != locked:
            self.api.set_status(view.tag.name, locked)
            view.status = locked

    def _build_list(
        self, name: str, entries: list[PayloadIoV], urls: dict[tuple[str, str], str]
    ) -> str:
        """A new payload list holding ``entries`` in start order, attached to no tag yet.

        Appending in start order to a list of no tag is what the server does right.
        """
        plist: str = self.api.post("pl", {"payload_type": name})["name"]
        for entry in sorted(entries, key=lambda e: e.iov.first):
            self._attach(plist, entry, urls)
        return plist

    def _attach(self, plist: str, entry: PayloadIoV, urls: dict[tuple[str, str], str]) -> None:
        server = iov_to_server(entry.iov)
        body: dict[str, Any] = {
            "payload_url": urls[(entry.payload.name, entry.payload.checksum)],
            "checksum": entry.payload.checksum,
            "major_iov": server.major,
            "minor_iov": server.minor,
        }
        if server.major_end is not None:
            body.update(major_iov_end=server.major_end, minor_iov_end=server.minor_end)
        piov = self.api.post("piov", body)
        self.api.put("piov_attach", {"payload_list": plist, "piov_id": piov["id"]})

    @contextlib.contextmanager
    def _writable(self, view: TagView, unlock: bool) -> Iterator[None]:
        """Let the server take the change; for a RUNNING tag, unlock it for the moment.

        A locked tag refuses most appends (HTML 500) and replacing a list. Before unlocking, a
        state record saying RUNNING must exist, so that the tag still reads RUNNING while it is
        unlocked (or if this process dies then). It is locked again afterwards, also after an
        error, and by the next write or ``set_state`` if this process died first.
        """
        if view.tag.state is not TagState.RUNNING:
            yield
            return
        if unlock and view.status != "unlocked":
            if view.record is None or view.record.after is not TagState.RUNNING:
                running = StateRecord(TagState.RUNNING, TagState.RUNNING, view.tag.description)
                self.book.append(view.tag.name, running, view.record)
            self.api.set_status(view.tag.name, "unlocked")
            view.status = "unlocked"
        try:
            yield
        except BaseException:
            with contextlib.suppress(CdbError):  # the first error is the one to report
                self.relock(view)
            raise
        self.relock(view)
