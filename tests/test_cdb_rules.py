"""The global-tag rules as pure functions (no store): append-only, overlaps, gaps."""

from __future__ import annotations

import pytest

from b2cal.cdb.model import GlobalTag, Payload, PayloadIoV, TagState
from b2cal.cdb.rules import apply, gaps_and_overlaps, plan_add, plan_remove
from b2cal.core.iov import IoV
from b2cal.errors import ForbiddenChange

P = Payload("T0", 1, "a" * 32, 10)
Q = Payload("T0", 2, "b" * 32, 10)


def entries(*iovs: IoV, payload: Payload = P) -> list[PayloadIoV]:
    return [PayloadIoV("t", payload, iov) for iov in iovs]


def tag(state: TagState) -> GlobalTag:
    return GlobalTag("t", state)


def test_running_append_closes_the_open_ended_last_iov() -> None:
    existing = entries(IoV(1, 0, 1, 9), IoV(1, 10, -1, -1))
    change = plan_add(tag(TagState.RUNNING), existing, [(Q, IoV(1, 20, -1, -1))])
    assert [(old.iov, new) for old, new in change.close] == [
        (IoV(1, 10, -1, -1), IoV(1, 10, 1, 19))
    ]
    after = apply(existing, "t", change)
    assert [str(e.iov) for e in after] == ["1,0,1,9", "1,10,1,19", "1,20,-1,-1"]


def test_running_append_across_experiments() -> None:
    existing = entries(IoV(1, 10, -1, -1))
    change = plan_add(tag(TagState.RUNNING), existing, [(Q, IoV(2, 0, -1, -1))])
    assert change.close[0][1] == IoV(1, 10, 1, -1)


@pytest.mark.parametrize("new", [IoV(1, 10, -1, -1), IoV(1, 5, 1, 30)])
def test_running_refuses_iovs_that_do_not_start_after_the_last(new: IoV) -> None:
    with pytest.raises(ForbiddenChange, match="does not start after"):
        plan_add(tag(TagState.RUNNING), entries(IoV(1, 10, -1, -1)), [(Q, new)])


def test_running_refuses_to_cut_a_closed_iov() -> None:
    with pytest.raises(ForbiddenChange, match="overlaps the closed IoV 1,2,1,9"):
        plan_add(tag(TagState.RUNNING), entries(IoV(1, 2, 1, 9)), [(Q, IoV(1, 8, -1, -1))])


@pytest.mark.parametrize(
    "state", [TagState.TESTING, TagState.VALIDATED, TagState.PUBLISHED, TagState.INVALID]
)
def test_frozen_states_refuse_writes(state: TagState) -> None:
    with pytest.raises(ForbiddenChange, match="frozen"):
        plan_add(tag(state), [], [(P, IoV(1, 0, 1, 1))])
    with pytest.raises(ForbiddenChange, match="only be removed from OPEN"):
        plan_remove(tag(state), [], [])


def test_rewriting_what_is_there_is_no_change_in_any_state() -> None:
    existing = entries(IoV(1, 0, 1, 9))
    for state in TagState:
        assert plan_add(tag(state), existing, [(P, IoV(1, 0, 1, 9))]).empty


def test_open_tags_refuse_overlaps_also_within_one_write() -> None:
    with pytest.raises(ForbiddenChange, match="overlaps"):
        plan_add(tag(TagState.OPEN), [], [(P, IoV(1, 0, 1, 9)), (Q, IoV(1, 9, 1, 12))])
    ok = plan_add(tag(TagState.OPEN), [], [(P, IoV(1, 0, 1, 9)), (Q, IoV(1, 10, 1, 12))])
    assert len(ok.add) == 2


def test_gaps_and_overlaps() -> None:
    assert gaps_and_overlaps(entries(IoV(1, 0, 1, 9), IoV(1, 10, -1, -1))) == []
    assert gaps_and_overlaps(entries(IoV(1, 0, 1, -1), IoV(2, 0, 2, 5))) == []
    assert gaps_and_overlaps(entries(IoV(1, 0, 1, 8), IoV(1, 10, 1, 12))) == [
        "T0: gap between IoVs 1,0,1,8 and 1,10,1,12"
    ]
    assert gaps_and_overlaps(entries(IoV(1, 0, -1, -1), IoV(1, 10, 1, 12))) == [
        "T0: IoVs 1,0,-1,-1 and 1,10,1,12 overlap"
    ]
