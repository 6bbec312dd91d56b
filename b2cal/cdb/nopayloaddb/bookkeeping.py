"""The exact b2cal state of every tag, kept on the nopayloaddb server itself.

Three server statuses cannot hold six states, and the server's global tag has no field to keep
the rest, so b2cal keeps it on the same server (every site then reads the same state): a
bookkeeping global tag (:data:`~b2cal.cdb.nopayloaddb.mapping.STATE_TAG`, unlocked, hidden
from ``tags()``) holds one payload type per tag
(:func:`~b2cal.cdb.nopayloaddb.mapping.state_type`), whose IoVs are state records
(:class:`~b2cal.cdb.nopayloaddb.mapping.StateRecord`) appended with increasing major. One
lookup past the last major reads the latest record of every tag at once.

A state change writes its record first, then the server status; a change interrupted between
the two reads as the state it came from (:func:`~b2cal.cdb.nopayloaddb.mapping.exact_state`),
and running it again completes it.
"""

from __future__ import annotations

import json
from typing import Final

from b2cal.cdb.nopayloaddb.mapping import STATE_TAG, TEXT_LIMIT, StateRecord, state_type
from b2cal.cdb.nopayloaddb.rest import NopayloaddbApi, path_segment
from b2cal.core.iov import ExpRun
from b2cal.errors import CdbError, NopayloaddbError

#: A lookup point later than any state record, to read the latest record of every tag at once.
_LATEST: Final = 2**62


class StateBook:
    """The bookkeeping global tag ``tag`` on the server ``api`` speaks to."""

    def __init__(self, api: NopayloaddbApi, tag: str = STATE_TAG) -> None:
        self.api = api
        self.tag = tag

    def latest(self) -> dict[str, StateRecord]:
        """The latest state record of every tag, by record type, in one request."""
        records = {}
        for row in self.api.lookup(self.tag, ExpRun(_LATEST, 0)):
            record = StateRecord.parse(row["payload_url"], row["checksum"], row["major_iov"])
            if record is not None:
                records[row["payload_type_name"]] = record
        return records

    def latest_of(self, tag: str) -> StateRecord | None:
        """The latest state record of ``tag``, if it has one."""
        return self.latest().get(state_type(tag))

    def append(self, tag: str, record: StateRecord, last: StateRecord | None = None) -> None:
        """Append a state record for ``tag`` (creating what it needs).

        One ``piov_attach`` makes it visible. ``last`` (the latest record, if known) saves the
        requests that make sure the bookkeeping tag and the tag's list exist.
        """
        if len(json.dumps(record.description)) > TEXT_LIMIT:
            raise CdbError(
                f"description of global tag {tag!r} is too long for nopayloaddb "
                f"(at most about {TEXT_LIMIT - 10} characters)"
            )
        ptype = state_type(tag)
        lists: dict[str, str] = self.api.get(f"gtPayloadLists/{path_segment(self.tag)}")
        if ptype not in lists:
            self._ensure_tag()
            self.api.create_if_absent("pt", {"name": ptype})
            plist = self.api.post("pl", {"payload_type": ptype})["name"]
            self.api.put("pl_attach", {"payload_list": plist, "global_tag": self.tag})
            lists[ptype] = plist
        if last is None:
            last = self.latest().get(ptype)
        number = last.number + 1 if last is not None else 1
        piov = self.api.post(
            "piov",
            {
                "payload_url": record.url,
                "checksum": json.dumps(record.description),
                "major_iov": number,
                "minor_iov": 0,
            },
        )
        self.api.put("piov_attach", {"payload_list": lists[ptype], "piov_id": piov["id"]})

    def _ensure_tag(self) -> None:
        try:
            self.api.get(f"globalTag/{path_segment(self.tag)}", light=1)
        except NopayloaddbError as exc:
            if exc.status != 404:
                raise
            self.api.create_if_absent("gt", {"name": self.tag, "status": "unlocked"})
