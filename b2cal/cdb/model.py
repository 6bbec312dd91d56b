"""The vocabulary of the conditions database: global tags and their states, payloads, IoVs.

These are plain values shared by every store implementation (embedded SQL, nopayloaddb REST)
and by the operations on top (upload, promotion, export), so the rules are written once.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from b2cal.caf.iov import IoV
from b2cal.errors import B2CalError


class TagState(enum.StrEnum):
    """Global tag states (DESIGN.md §2). What a tag in each state accepts is in ``rules``."""

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


class CdbError(B2CalError):
    """A conditions-database request that cannot be done; the database is left untouched."""


class UnknownTag(CdbError):
    pass


class UnknownPayload(CdbError):
    pass


class NoPayloadValid(CdbError):
    """No payload of that name is valid at that run in any tag of the chain."""


class ForbiddenChange(CdbError):
    """The tag's state or the IoV rules forbid the write."""


class ChecksumMismatch(CdbError):
    pass


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
