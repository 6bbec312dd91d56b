"""The vocabulary of the conditions database: global tags and their states, payloads, IoVs.

These are plain values shared by every store implementation (embedded SQL, nopayloaddb REST)
and by the operations on top (upload, promotion, export), so the rules are written once.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from b2cal.core.iov import IoV
from b2cal.errors import CdbError


class TagState(enum.StrEnum):
    """Global tag states (docs/conditions-database.md); what a tag in each state accepts is in
    ``rules``."""

    OPEN = "OPEN"
    TESTING = "TESTING"
    VALIDATED = "VALIDATED"
    PUBLISHED = "PUBLISHED"
    RUNNING = "RUNNING"
    INVALID = "INVALID"


#: The allowed state changes, and no others.
TRANSITIONS: dict[TagState, frozenset[TagState]] = {
    TagState.OPEN: frozenset({TagState.TESTING, TagState.RUNNING}),
    TagState.TESTING: frozenset({TagState.VALIDATED, TagState.OPEN}),
    TagState.VALIDATED: frozenset({TagState.PUBLISHED, TagState.OPEN}),
    TagState.PUBLISHED: frozenset({TagState.INVALID}),
    TagState.RUNNING: frozenset({TagState.INVALID}),
    TagState.INVALID: frozenset(),
}


def parse_state(text: str) -> TagState:
    try:
        return TagState(text.strip().upper())
    except ValueError:
        known = ", ".join(s.value for s in TagState)
        raise CdbError(f"unknown global tag state {text!r} (one of {known})") from None


@dataclass(frozen=True)
class GlobalTag:
    name: str
    state: TagState
    description: str = ""
    created: datetime | None = None


@dataclass(frozen=True)
class Payload:
    """A stored payload revision. Identity is (name, checksum); revisions count per name.

    Immutable once stored: the same constants uploaded again are the same payload.
    """

    name: str
    revision: int
    checksum: str
    size: int
    provenance: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    created: datetime | None = field(default=None, compare=False)


@dataclass(frozen=True)
class PayloadIoV:
    """A payload valid for an IoV inside one global tag."""

    tag: str
    payload: Payload
    iov: IoV

    @property
    def name(self) -> str:
        return self.payload.name

    @property
    def key(self) -> tuple[str, str, IoV]:
        """What makes the entry one of its tag: the payload's identity and the IoV."""
        return (self.payload.name, self.payload.checksum, self.iov)


def by_name_and_start(entries: Iterable[PayloadIoV]) -> list[PayloadIoV]:
    """Entries in the order a tag lists them: by payload name, then IoV start."""
    return sorted(entries, key=lambda e: (e.payload.name, e.iov.first))


def json_object(value: Mapping[str, Any], what: str) -> dict[str, Any]:
    """``value`` after a JSON round trip (tuples become lists), or CdbError if it is not JSON.

    Provenance is stored as JSON, so values are compared in the form they come back in.
    ``what`` names the value in the error (e.g. ``provenance of payload ChannelT0``).
    """
    try:
        result: dict[str, Any] = json.loads(json.dumps(value))
    except (TypeError, ValueError) as exc:
        raise CdbError(f"{what} is not JSON: {exc}") from None
    return result
