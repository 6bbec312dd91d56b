"""What a global tag accepts, as pure functions over its current IoVs.

Every store (embedded SQL, nopayloaddb REST) asks these functions what a write means before it
touches anything, so the rules of docs/conditions-database.md hold whatever the backend can
enforce itself:

* OPEN: IoVs may be added and removed; IoVs of one payload name never overlap.
* RUNNING: append-only. A new IoV starts after the last one of its payload name; an open-ended
  last IoV is closed just before the new one (this is what promotion does).
* TESTING, VALIDATED, PUBLISHED, INVALID: frozen.

Writing an IoV that is already there (same payload, same IoV) is not a change, so a retried
upload or promotion does nothing the second time.

A write also says which state it expects its tag in (:func:`check_state`: uploads and imports
go into OPEN tags, promotion into RUNNING ones): a store checks it on the state it has locked
(embedded) or read last (nopayloaddb), together with the rules above. Promotion is decided as a
whole by :func:`plan_promotion`, from both tags' states and IoVs as the store reads them inside
the write (on the embedded store, in one transaction).

New global tags get names every store can hold alike (:func:`check_tag_name`).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from b2cal.cdb.model import TRANSITIONS, GlobalTag, Payload, PayloadIoV, TagState, by_name_and_start
from b2cal.core.iov import ExpRun, IoV
from b2cal.errors import CdbError, ForbiddenChange

#: The longest global tag name (nopayloaddb's limit).
TAG_NAME_LIMIT = 80
_TAG_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.+-]{{0,{TAG_NAME_LIMIT - 1}}}")


def check_tag_name(name: str) -> None:
    """Raise CdbError unless ``name`` may name a new global tag, on every store.

    1 to 80 letters, digits and ``_ . + -``, starting with a letter or digit: nopayloaddb puts
    tag names in URL paths (and at most 80 characters in a column), and MariaDB compares
    ``'tag'`` and ``'tag '`` as equal, so a name that only one store takes could not move
    between stores (clone, export, import).
    """
    if not _TAG_NAME.fullmatch(name):
        raise CdbError(
            f"global tag name {name!r} cannot be used with nopayloaddb and SQL databases alike: "
            f"use 1 to {TAG_NAME_LIMIT} letters, digits and _ . + -, starting with a letter or "
            "digit"
        )


def check_transition(tag: GlobalTag, new: TagState) -> None:
    """Raise ForbiddenChange unless ``tag`` may move from its state to ``new``."""
    if new not in TRANSITIONS[tag.state]:
        allowed = ", ".join(sorted(s.value for s in TRANSITIONS[tag.state])) or "none (final)"
        raise ForbiddenChange(
            f"global tag {tag.name} is {tag.state.value}: it cannot become {new.value} "
            f"(allowed: {allowed})"
        )


#: Why a write wants its tag in a state: the end of the refusal when the tag is in another.
_WHY_STATE = {
    TagState.OPEN: (
        "uploads and imports go into an OPEN (staging) tag; a RUNNING tag changes only by promotion"
    ),
    TagState.RUNNING: "promotion goes into a RUNNING tag",
    TagState.VALIDATED: "only a VALIDATED tag is promoted",
}


def check_state(tag: GlobalTag, state: TagState) -> None:
    """Raise ForbiddenChange unless ``tag`` is in ``state``, the state a write expects it in."""
    if tag.state is not state:
        why = _WHY_STATE.get(state, f"this write expects it {state.value}")
        raise ForbiddenChange(f"global tag {tag.name} is {tag.state.value}: {why}")


@dataclass
class IoVChange:
    """What a write does to one tag: IoVs closed (old entry, new IoV), removed, and added."""

    close: list[tuple[PayloadIoV, IoV]] = field(default_factory=list)
    remove: list[PayloadIoV] = field(default_factory=list)
    add: list[tuple[Payload, IoV]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.close or self.remove or self.add)


def plan_add(
    tag: GlobalTag,
    existing: Sequence[PayloadIoV],
    new: Sequence[tuple[Payload, IoV]],
    *,
    state: TagState,
) -> IoVChange:
    """The change that adds ``new`` to ``tag``, or ForbiddenChange saying why it may not.

    ``state`` is the state the write expects the tag in (:func:`check_state`); a tag in
    another one refuses even a write that would change nothing.
    """
    check_state(tag, state)
    present = {e.key for e in existing}
    todo = [(p, iov) for p, iov in new if (p.name, p.checksum, iov) not in present]
    if not todo:
        return IoVChange()
    if tag.state is TagState.OPEN:
        _check_no_overlap(tag, existing, todo)
        return IoVChange(add=todo)
    if tag.state is TagState.RUNNING:
        return _append(tag, existing, todo)
    raise ForbiddenChange(f"global tag {tag.name} is {tag.state.value}: its contents are frozen")


def plan_remove(
    tag: GlobalTag, existing: Sequence[PayloadIoV], entries: Iterable[PayloadIoV]
) -> IoVChange:
    """Removing IoVs: only from an OPEN tag."""
    if tag.state is not TagState.OPEN:
        raise ForbiddenChange(
            f"global tag {tag.name} is {tag.state.value}: IoVs can only be removed from OPEN tags"
        )
    keys = {e.key for e in existing}
    remove = [e for e in entries if e.key in keys]
    return IoVChange(remove=remove)


def _check_no_overlap(
    tag: GlobalTag, existing: Sequence[PayloadIoV], new: Sequence[tuple[Payload, IoV]]
) -> None:
    placed = [(e.payload.name, e.iov) for e in existing]
    for payload, iov in new:
        for name, other in placed:
            if name == payload.name and other.overlaps(iov):
                raise ForbiddenChange(
                    f"IoV {iov} of {payload.name} overlaps IoV {other} already in global tag "
                    f"{tag.name}"
                )
        placed.append((payload.name, iov))


def _append(
    tag: GlobalTag, existing: Sequence[PayloadIoV], new: Sequence[tuple[Payload, IoV]]
) -> IoVChange:
    """Append-only: per payload name, the new IoVs come after the last existing one."""
    change = IoVChange()
    names = sorted({payload.name for payload, _ in new})
    for name in names:
        added = sorted((item for item in new if item[0].name == name), key=lambda i: i[1].first)
        for (_, a), (_, b) in itertools.pairwise(added):
            if a.overlaps(b):
                raise ForbiddenChange(f"new IoVs {a} and {b} of {name} overlap")
        first = added[0][1]
        mine = [e for e in existing if e.payload.name == name]
        last = max(mine, key=lambda e: e.iov.first) if mine else None
        if last is not None:
            if first.first <= last.iov.first:
                raise ForbiddenChange(
                    f"global tag {tag.name} is RUNNING (append-only): IoV {first} of {name} "
                    f"does not start after the last one ({last.iov})"
                )
            if last.iov.overlaps(first):
                if not last.iov.is_open_ended:
                    raise ForbiddenChange(
                        f"global tag {tag.name} is RUNNING (append-only): IoV {first} of {name} "
                        f"overlaps the closed IoV {last.iov}"
                    )
                change.close.append((last, IoV.from_runs(last.iov.first, first.first.previous())))
        change.add.extend(added)
    return change


def apply(existing: Sequence[PayloadIoV], tag: str, change: IoVChange) -> list[PayloadIoV]:
    """The tag's IoVs after ``change`` (for stores that keep IoVs as a list, and for tests)."""
    closed = {old.key: iov for old, iov in change.close}
    removed = {e.key for e in change.remove}
    result = [
        PayloadIoV(tag, entry.payload, closed.get(entry.key, entry.iov))
        for entry in existing
        if entry.key not in removed
    ]
    result.extend(PayloadIoV(tag, payload, iov) for payload, iov in change.add)
    return by_name_and_start(result)


def valid_at(entries: Iterable[PayloadIoV], name: str, exprun: ExpRun) -> PayloadIoV | None:
    """The entry of ``name`` whose IoV contains ``exprun`` (the latest start, if several)."""
    matches = [e for e in entries if e.payload.name == name and e.iov.contains(exprun)]
    return max(matches, key=lambda e: e.iov.first) if matches else None


def plan_promotion(
    staging: GlobalTag,
    staged: Sequence[PayloadIoV],
    running: GlobalTag,
    current: Sequence[PayloadIoV],
    start: ExpRun,
) -> IoVChange:
    """The change promoting ``staging`` (holding ``staged``) into ``running`` (holding
    ``current``) from run ``start`` on, or why it may not be done.

    The staging tag must be VALIDATED and free of gaps and overlaps, the running tag RUNNING.
    The staging payloads valid at or after ``start`` are appended to the running tag, the
    first of each name starting at ``start`` at the earliest; the running tag's open-ended
    IoVs are closed just before (the RUNNING append rule, :func:`plan_add`). Empty when the
    promotion was done already.
    """
    check_state(staging, TagState.VALIDATED)
    check_state(running, TagState.RUNNING)
    problems = gaps_and_overlaps(staged)
    if problems:
        raise CdbError(f"global tag {staging.name} cannot be promoted: {'; '.join(problems)}")
    window = IoV(start.exp, start.run, -1, -1)
    new = [(e.payload, _clip(e.iov, start)) for e in staged if e.iov.overlaps(window)]
    if not new:
        raise CdbError(
            f"global tag {staging.name} has no payload valid from experiment {start.exp} run "
            f"{start.run} on"
        )
    _check_coverage_kept(current, new, staging.name, running.name)
    return plan_add(running, current, new, state=TagState.RUNNING)


def _check_coverage_kept(
    current: Sequence[PayloadIoV], new: Sequence[tuple[Payload, IoV]], staging: str, running: str
) -> None:
    """Refuse a promotion that would leave runs the RUNNING tag covers without a payload.

    Closing a RUNNING tag's open-ended IoV is only right when what replaces it is open-ended
    too; a staging tag that ends at some run would otherwise take every later run's constants
    away (a recalibration of past runs is a new tag, not a promotion).
    """
    for name in sorted({payload.name for payload, _ in new}):
        open_now = any(e.name == name and e.iov.is_open_ended for e in current)
        last = max((iov for payload, iov in new if payload.name == name), key=lambda i: i.first)
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


def gaps_and_overlaps(entries: Iterable[PayloadIoV]) -> list[str]:
    """Problems that make a tag's IoVs unfit for promotion, one message each."""
    problems = []
    by_name: dict[str, list[IoV]] = {}
    for entry in entries:
        by_name.setdefault(entry.payload.name, []).append(entry.iov)
    for name, iovs in sorted(by_name.items()):
        iovs.sort(key=lambda i: i.first)
        for a, b in itertools.pairwise(iovs):
            if a.overlaps(b):
                problems.append(f"{name}: IoVs {a} and {b} overlap")
            elif IoV.from_runs(a.first, b.first.previous()) != a:
                problems.append(f"{name}: gap between IoVs {a} and {b}")
    return problems
