"""How b2cal's values are held in nopayloaddb's: IoVs, tag states, payload URLs, names.

* A b2cal global tag is a nopayloaddb global tag of the same name; a payload name is a payload
  type; a tag holds one payload list per payload type.
* ``(exp, run)`` is ``(major, minor)``. nopayloaddb ends are exclusive, b2cal's inclusive:
  ``(exp_high, run_high)`` becomes the end ``(exp_high, run_high + 1)``; ``run_high = -1`` ("to
  the end of exp_high") becomes ``(exp_high + 1, 0)``; an open-ended IoV is sent without an end
  (the server stores its largest integer there). See :func:`iov_to_server`. Exclusive ends are
  the server's default ``CDB_IOV_MODE=continuous``; b2cal refuses to write to a server in
  ``discrete`` mode, whose trimming would give other IoVs
  (:meth:`~b2cal.cdb.nopayloaddb.writes.TagWriter.check_iov_mode`).
* A payload IoV's ``payload_url`` is ``<name>/rev_<revision>/<md5>``, the payload file's path in
  the payload directory, so it carries the revision; ``checksum`` is the md5.
* States: OPEN is ``unlocked``, RUNNING is ``locked``, the four frozen states are ``frozen``.
  That loses information, and the server's global tag has no field that could keep the rest
  (its ``description`` column is not exposed by the API, ``author`` can be set only at
  creation). The exact state therefore lives on the same server, so that every site agrees: a
  bookkeeping global tag (:data:`STATE_TAG`) holds one payload type per b2cal tag, whose IoVs
  are state *records* ``"<from>><to>"`` (payload_url) with the tag's description (checksum
  field), appended with increasing major (:mod:`b2cal.cdb.nopayloaddb.bookkeeping`). See
  :func:`exact_state`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from b2cal.cdb.model import GlobalTag, Payload, PayloadIoV, TagState
from b2cal.core.files import md5sum
from b2cal.core.iov import ExpRun, IoV
from b2cal.errors import B2CalError, CdbError

#: What nopayloaddb stores as the end of an open-ended IoV (its ``sys.maxsize``).
OPEN_END: Final = 2**63 - 1
#: The bookkeeping global tag that holds the exact b2cal state of every tag.
STATE_TAG: Final = "b2cal_tag_states"
#: Payload types of state records are this prefix plus the tag name.
STATE_TYPE_PREFIX: Final = "b2cal.state."
#: The server's limits on names (global tags, payload types) and free text fields.
NAME_LIMIT: Final = 80
TEXT_LIMIT: Final = 255

_PAYLOAD_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")
_OUR_URL = re.compile(r"(?P<name>[^/]+)/rev_(?P<revision>[0-9]+)/(?P<checksum>[0-9a-f]{32})")


# --- IoVs -------------------------------------------------------------------------------------
class ServerIoV(NamedTuple):
    """An IoV as nopayloaddb holds it: a start and an exclusive end, ``None`` when open."""

    major: int
    minor: int
    major_end: int | None
    minor_end: int | None

    @property
    def end(self) -> tuple[int, int]:
        """The end as a comparable pair, open ends at the server's largest integer."""
        if self.major_end is None or self.minor_end is None:
            return (OPEN_END, OPEN_END)
        return (self.major_end, self.minor_end)

    def contains(self, point: ExpRun) -> bool:
        """Whether the run is inside, the way the server's numbers read (start <= p < end)."""
        return (self.major, self.minor) <= tuple(point) < self.end


def iov_to_server(iov: IoV) -> ServerIoV:
    """b2cal's inclusive IoV as nopayloaddb's half-open one (exp -> major, run -> minor)."""
    if iov.is_open_ended:
        return ServerIoV(iov.exp_low, iov.run_low, None, None)
    if iov.run_high == -1:
        return ServerIoV(iov.exp_low, iov.run_low, iov.exp_high + 1, 0)
    return ServerIoV(iov.exp_low, iov.run_low, iov.exp_high, iov.run_high + 1)


def iov_from_server(major: int, minor: int, major_end: int | None, minor_end: int | None) -> IoV:
    """The inverse of :func:`iov_to_server`; an end at the server's largest integer is open."""
    if major_end is None or minor_end is None or major_end >= OPEN_END:
        return IoV(major, minor, -1, -1)
    last = ExpRun(major_end, minor_end).previous()  # (E, 0) -> (E-1, -1): end of experiment
    try:
        return IoV(major, minor, last.exp, last.run)
    except B2CalError:
        raise CdbError(
            f"nopayloaddb IoV ({major},{minor}) to ({major_end},{minor_end}) has no b2cal "
            "equivalent (it ends before it starts)"
        ) from None


# --- states -----------------------------------------------------------------------------------
#: The nopayloaddb status that protects a tag in each state the way the server can.
STATUS_OF: Final[Mapping[TagState, str]] = {
    TagState.OPEN: "unlocked",
    TagState.TESTING: "frozen",
    TagState.VALIDATED: "frozen",
    TagState.PUBLISHED: "frozen",
    TagState.RUNNING: "locked",
    TagState.INVALID: "frozen",
}
#: Server statuses each state may be seen with. RUNNING tags are unlocked for a moment while
#: b2cal appends to them (the server refuses most appends to locked tags); b2cal still treats
#: them as RUNNING then, and locks them again after the append (or the next one, after a crash).
_SEEN_WITH: Final[Mapping[TagState, frozenset[str]]] = {
    state: frozenset({status, "unlocked"} if state is TagState.RUNNING else {status})
    for state, status in STATUS_OF.items()
}
#: The state of a tag without a usable state record (made by another tool, or its record lost).
#: A frozen tag nobody staged through b2cal is a released one.
_DEFAULT_STATE: Final[Mapping[str, TagState]] = {
    "unlocked": TagState.OPEN,
    "locked": TagState.RUNNING,
    "frozen": TagState.PUBLISHED,
}


@dataclass(frozen=True)
class StateRecord:
    """One state change of a tag, as kept in the bookkeeping tag: from, to, description."""

    before: TagState
    after: TagState
    description: str = ""
    #: The record's position in its tag's history (the major of its IoV).
    number: int = 0

    @property
    def url(self) -> str:
        return f"{self.before.value}>{self.after.value}"

    @classmethod
    def parse(cls, url: str, checksum: str, number: int) -> StateRecord | None:
        """The record kept in a payload IoV, or None if it is not one b2cal wrote."""
        try:
            before, after = (TagState(part) for part in url.split(">"))
            description = json.loads(checksum)
        except (ValueError, TypeError):
            return None
        return cls(before, after, description, number) if isinstance(description, str) else None


def exact_state(status: str, record: StateRecord | None) -> TagState:
    """A tag's b2cal state from its server status and its latest state record.

    The record is written before the status changes, so a record whose target the status does
    not match yet is an interrupted change: the tag is still in the state it came from.
    """
    if record is not None:
        if status in _SEEN_WITH[record.after]:
            return record.after
        if status in _SEEN_WITH[record.before]:
            return record.before
    return _DEFAULT_STATE.get(status, TagState.PUBLISHED)


def state_type(tag: str) -> str:
    """The payload type of a tag's state records (hashed if the name would be too long)."""
    name = STATE_TYPE_PREFIX + tag
    return name if len(name) <= NAME_LIMIT else f"{STATE_TYPE_PREFIX}md5.{md5sum(tag.encode())}"


@dataclass
class TagView:
    """A tag as read from the server: its b2cal value, server status, lists and IoVs."""

    tag: GlobalTag
    status: str
    record: StateRecord | None
    #: The payload list attached for each payload type.
    lists: dict[str, str] = field(default_factory=dict)
    entries: list[PayloadIoV] = field(default_factory=list)
    #: payload_url of each (name, checksum) as the server has it (kept as is when copying).
    urls: dict[tuple[str, str], str] = field(default_factory=dict)


# --- payloads ---------------------------------------------------------------------------------
def payload_url(payload: Payload) -> str:
    """The payload_url b2cal gives a payload: its file's path in the payload directory."""
    return f"{payload.name}/rev_{payload.revision}/{payload.checksum}"


def url_revision(name: str, url: str) -> int | None:
    """The revision in a payload_url b2cal gave a payload ``name``; None for other URLs."""
    match = _OUR_URL.fullmatch(url)
    return int(match["revision"]) if match is not None and match["name"] == name else None


def is_payload_name(name: str) -> bool:
    """Whether b2cal stores payloads of that name on nopayloaddb (see check_payload_name)."""
    return _PAYLOAD_NAME.fullmatch(name) is not None and len(name) <= NAME_LIMIT


def check_payload_name(name: str) -> None:
    """Payload names become URL segments and folder names: keep them to what both take."""
    if not is_payload_name(name):
        raise CdbError(
            f"payload name {name!r} cannot be used with nopayloaddb: use at most "
            f"{NAME_LIMIT} letters, digits and _ . + - (not starting with . + -)"
        )
