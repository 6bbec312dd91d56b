"""The one interface of a conditions database, whatever holds it.

Two implementations: the embedded store (SQLAlchemy on SQLite, PostgreSQL or MariaDB, payload
files content-addressed on disk) and a client of a nopayloaddb REST server. Operations on top
(upload, promotion, export, import, diff) are written once against this interface.

A request the rules forbid leaves the database untouched, on every store: the rules (what a
tag in a given state accepts) are in :mod:`b2cal.cdb.rules`, and a store asks them before it
writes. How an accepted write happens depends on the store:

* embedded: every method that writes is one transaction, done completely or not at all;
* nopayloaddb: the server has no transactions, so a write is several requests, each idempotent,
  ordered so that nothing half-done is visible. IoVs are added and removed atomically per
  payload name: a client that dies in the middle of a write may leave some payload names of it
  done and others not, and the same write run again completes it. A state change reads as the
  state before it until it is complete (:mod:`b2cal.cdb.nopayloaddb.writes`).

A decision is only as good as the reads it is made from, so what a write depends on is read in
the write itself, never by the caller beforehand:

* :meth:`ConditionsStore.write_iovs` takes the state the tag must be in (``state=``: OPEN for
  uploads and imports, RUNNING for appends) and checks it with the other rules, on the embedded
  store after the tag's row is locked. A caller that checked the state first could see it
  change before the write (a tag moved to RUNNING would take an upload without the promotion
  checks).
* :meth:`ConditionsStore.promote` is a store method, not an operation composed of reads and a
  write: each store reads both tags' states and IoVs and decides with the pure
  :func:`b2cal.cdb.rules.plan_promotion`; the embedded store does it all in one transaction
  holding both tags' rows (locked in name order, so two promotions cannot deadlock).
* nopayloaddb cannot lock anything: it checks once when it plans and again, from a fresh read,
  right before the first request that makes the write visible (``docs/nopayloaddb.md`` says
  what window is left).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from b2cal.cdb.model import GlobalTag, Payload, PayloadIoV, TagState, json_object
from b2cal.cdb.rules import IoVChange, valid_at
from b2cal.core.files import md5sum
from b2cal.core.iov import ExpRun, IoV
from b2cal.errors import CdbError, ChecksumMismatch, NoPayloadValid


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

    def stored_provenance(self) -> dict[str, Any]:
        """The provenance as it will be stored and read back (CdbError if it is not JSON)."""
        return json_object(self.provenance, f"provenance of payload {self.name}")


def provenance_query(provenance: Mapping[str, Any]) -> dict[str, Any]:
    """A :meth:`ConditionsStore.find_payloads` query in the form stored provenance has."""
    return json_object(provenance, "provenance query")


def with_provenance(payloads: Iterable[Payload], wanted: Mapping[str, Any]) -> list[Payload]:
    """The payloads whose provenance has every key of ``wanted`` with its value (a query from
    :func:`provenance_query`), sorted by name and revision."""
    missing = object()
    found = [
        p
        for p in payloads
        if all(p.provenance.get(key, missing) == value for key, value in wanted.items())
    ]
    return sorted(found, key=lambda p: (p.name, p.revision))


def read_payload_file(path: Path, payload: Payload) -> bytes:
    """The bytes of ``payload``'s file at ``path``, checked against its checksum.

    ChecksumMismatch if the file was changed; FileNotFoundError if there is none, which each
    store explains in its own terms.
    """
    data = path.read_bytes()
    actual = md5sum(data)
    if actual != payload.checksum:
        raise ChecksumMismatch(
            f"payload file {path} of {payload.name} revision {payload.revision} was changed "
            f"on disk: its checksum is {actual}, the conditions database says {payload.checksum}"
        )
    return data


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
        """A new, empty OPEN tag; CdbError if the name is taken or not a legal name
        (:func:`b2cal.cdb.rules.check_tag_name`)."""

    @abstractmethod
    def set_state(self, name: str, state: TagState) -> GlobalTag:
        """Move a tag to ``state`` if the transition table allows it (ForbiddenChange if not)."""

    @abstractmethod
    def clone_tag(self, source: str, target: str, description: str = "") -> GlobalTag:
        """A new OPEN tag ``target`` holding the IoVs of ``source`` (names as in create_tag)."""

    # --- payloads and IoVs -------------------------------------------------------------
    @abstractmethod
    def iovs(self, tag: str, name: str | None = None) -> list[PayloadIoV]:
        """The tag's payload IoVs (of one payload name, if given), by name then IoV start."""

    @abstractmethod
    def write_iovs(
        self, tag: str, entries: Sequence[NewPayloadIoV], *, state: TagState
    ) -> IoVChange:
        """Store the payloads and add their IoVs to ``tag``, which must be in ``state``.

        ``state`` is the state the caller's write is meant for (uploads and imports: OPEN; an
        append to a RUNNING tag: RUNNING); a tag in another state refuses the write with
        ForbiddenChange (:func:`b2cal.cdb.rules.check_state`), checked as late as the store can
        (see the module doc). On the embedded store this is one transaction. On nopayloaddb it
        is atomic per payload name: interrupted, it may have added the IoVs of some names and
        not those of others, and the same call repeated completes it (see the module doc). A
        payload whose (name, checksum) is stored already is reused, never stored twice; an IoV
        already in the tag with the same payload is not added again. What the tag's state
        allows is decided by :func:`b2cal.cdb.rules.plan_add`. Returns the change applied
        (empty when everything was there already, e.g. a retried upload).
        """

    @abstractmethod
    def promote(self, staging: str, running: str, start: ExpRun) -> IoVChange:
        """Merge the VALIDATED tag ``staging`` into the RUNNING tag ``running`` from ``start`` on.

        What is appended is decided by :func:`b2cal.cdb.rules.plan_promotion` from both tags'
        states and IoVs as the store reads them inside the write (see the module doc). The
        payloads appended must have intact files. Promoting again changes nothing.
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
    def check_chain(self, tags: Sequence[str]) -> None:
        """A lookup chain must name tags that exist, none of them INVALID ("never used").

        Every tag is checked before any lookup, so a typo late in the chain is not hidden by
        an earlier tag that happens to hold the payload.
        """
        if not tags:
            raise CdbError("the lookup names no global tag")
        for tag in tags:
            if self.tag(tag).state is TagState.INVALID:
                raise CdbError(f"global tag {tag} is INVALID: it is never used for lookups")

    def lookup(self, tags: Sequence[str], name: str, exprun: ExpRun) -> PayloadIoV:
        """The payload ``name`` valid at ``exprun``: the first tag of the chain that has one."""
        self.check_chain(tags)
        for tag in tags:
            found = valid_at(self.iovs(tag, name), name, exprun)
            if found is not None:
                return found
        raise NoPayloadValid(tags, name, exprun.exp, exprun.run)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
