"""The one interface of a conditions database, whatever holds it.

Two implementations: the embedded store (SQLAlchemy on SQLite, PostgreSQL or MariaDB, payload
files content-addressed on disk) and a client of a nopayloaddb REST server. Operations on top
(upload, promotion, export, import, diff) are written once against this interface.

Every method that writes is one transaction: it happens completely or not at all, and a
request the rules forbid leaves the database untouched. The rules themselves (what a tag in a
given state accepts) are in :mod:`b2cal.cdb.rules`; a store asks them before it writes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Self

from b2cal.caf.iov import ExpRun, IoV
from b2cal.caf.localdb import md5sum
from b2cal.cdb.model import (
    ChecksumMismatch,
    GlobalTag,
    NoPayloadValid,
    Payload,
    PayloadIoV,
    TagState,
)
from b2cal.cdb.rules import IoVChange, valid_at


@dataclass(frozen=True)
class NewPayloadIoV:
    """A payload to store (if not stored yet) and the IoV to give it in a tag.

    ``checksum``, when given, is what the caller expects the data's md5 to be (e.g. from a
    provenance sidecar); a mismatch refuses the whole write.
    """

    name: str
    data: bytes
    iov: IoV
    provenance: dict[str, Any] = field(default_factory=dict)
    checksum: str | None = None

    def verified_checksum(self) -> str:
        actual = md5sum(self.data)
        if self.checksum is not None and self.checksum != actual:
            raise ChecksumMismatch(
                f"payload {self.name} for IoV {self.iov}: checksum {actual} of the data "
                f"differs from the expected {self.checksum}"
            )
        return actual


class ConditionsStore(ABC):
    """A conditions database: global tags, payloads, payload IoVs."""

    # --- global tags -------------------------------------------------------------------
    @abstractmethod
    def tags(self) -> list[GlobalTag]:
        """Every global tag, sorted by name."""

    @abstractmethod
    def tag(self, name: str) -> GlobalTag:
        """One global tag; UnknownTag if there is none of that name."""

    @abstractmethod
    def create_tag(self, name: str, description: str = "") -> GlobalTag:
        """A new, empty OPEN tag; CdbError if the name is taken."""

    @abstractmethod
    def set_state(self, name: str, state: TagState) -> GlobalTag:
        """Move a tag to ``state`` if the transition table allows it (ForbiddenChange if not)."""

    @abstractmethod
    def clone_tag(self, source: str, target: str, description: str = "") -> GlobalTag:
        """A new OPEN tag ``target`` holding the IoVs of ``source``."""

    # --- payloads and IoVs -------------------------------------------------------------
    @abstractmethod
    def iovs(self, tag: str, name: str | None = None) -> list[PayloadIoV]:
        """The tag's payload IoVs (of one payload name, if given), by name then IoV start."""

    @abstractmethod
    def write_iovs(self, tag: str, entries: Sequence[NewPayloadIoV]) -> IoVChange:
        """Store the payloads and add their IoVs to ``tag``, as one transaction.

        A payload whose (name, checksum) is stored already is reused, never stored twice; an
        IoV already in the tag with the same payload is not added again. What the tag's state
        allows is decided by :func:`b2cal.cdb.rules.plan_add`. Returns the change applied
        (empty when everything was there already, e.g. a retried upload).
        """

    @abstractmethod
    def remove_iovs(self, tag: str, entries: Sequence[PayloadIoV]) -> IoVChange:
        """Remove IoVs from an OPEN tag (ForbiddenChange for any other state)."""

    @abstractmethod
    def payload(self, name: str, revision: int) -> Payload:
        """One stored payload revision; UnknownPayload if absent."""

    @abstractmethod
    def payload_data(self, payload: Payload) -> bytes:
        """The payload file's bytes, checked against its checksum (ChecksumMismatch)."""

    @abstractmethod
    def find_payloads(self, name: str | None = None, **provenance: Any) -> list[Payload]:
        """Payloads whose provenance has every given key with the given value.

        E.g. ``find_payloads(calibration_run="3f2a...")`` or ``find_payloads("ChannelT0",
        calibration="ChannelT0", iteration=1)``; sorted by name and revision.
        """

    def close(self) -> None:  # noqa: B027 - stores without resources need not override
        """Release connections."""

    # --- derived operations ------------------------------------------------------------
    def lookup(self, tags: Sequence[str], name: str, exprun: ExpRun) -> PayloadIoV:
        """The payload ``name`` valid at ``exprun``: the first tag of the chain that has one."""
        for tag in tags:
            self.tag(tag)  # an unknown tag in the chain is an error, not a miss
            found = valid_at(self.iovs(tag, name), name, exprun)
            if found is not None:
                return found
        raise NoPayloadValid(
            f"no payload {name} valid at experiment {exprun.exp} run {exprun.run} in "
            f"global tag{'s' if len(tags) > 1 else ''} {', '.join(tags)}"
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
