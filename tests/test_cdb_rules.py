"""The global-tag rules as pure functions (no store): append-only, overlaps, gaps."""

from __future__ import annotations

import pytest

from b2cal.cdb.model import GlobalTag, Payload, PayloadIoV, TagState
from b2cal.cdb.rules import (
    IoVChange,
    apply,
    gaps_and_overlaps,
    plan_add,
    plan_promotion,
    plan_remove,
)
from b2cal.core.iov import ExpRun, IoV
from b2cal.errors import CdbError, ForbiddenChange

pytestmark = pytest.mark.unit

P = Payload("T0", 1, "a" * 32, 10)
Q = Payload("T0", 2, "b" * 32, 10)


def entries(*iovs: IoV, payload: Payload = P) -> list[PayloadIoV]:
    return [PayloadIoV("t", payload, iov) for iov in iovs]


def tag(state: TagState) -> GlobalTag:
    return GlobalTag("t", state)


def add(state: TagState, existing: list[PayloadIoV], new: list[tuple[Payload, IoV]]) -> IoVChange:
    """Adding ``new`` to a tag in ``state`` by a write that expects it there."""
    return plan_add(tag(state), existing, new, state=state)


def test_running_append_closes_the_open_ended_last_iov() -> None:
    existing = entries(IoV(1, 0, 1, 9), IoV(1, 10, -1, -1))
    change = add(TagState.RUNNING, existing, [(Q, IoV(1, 20, -1, -1))])
    assert [(old.iov, new) for old, new in change.close] == [
        (IoV(1, 10, -1, -1), IoV(1, 10, 1, 19))
    ]
    after = apply(existing, "t", change)
    assert [str(e.iov) for e in after] == ["1,0,1,9", "1,10,1,19", "1,20,-1,-1"]


def test_running_append_across_experiments() -> None:
    existing = entries(IoV(1, 10, -1, -1))
    change = add(TagState.RUNNING, existing, [(Q, IoV(2, 0, -1, -1))])
    assert change.close[0][1] == IoV(1, 10, 1, -1)


@pytest.mark.parametrize("new", [IoV(1, 10, -1, -1), IoV(1, 5, 1, 30)])
def test_running_refuses_iovs_that_do_not_start_after_the_last(new: IoV) -> None:
    with pytest.raises(ForbiddenChange, match="does not start after"):
        add(TagState.RUNNING, entries(IoV(1, 10, -1, -1)), [(Q, new)])


def test_running_refuses_to_cut_a_closed_iov() -> None:
    with pytest.raises(ForbiddenChange, match="overlaps the closed IoV 1,2,1,9"):
        add(TagState.RUNNING, entries(IoV(1, 2, 1, 9)), [(Q, IoV(1, 8, -1, -1))])


@pytest.mark.parametrize(
    "state", [TagState.TESTING, TagState.VALIDATED, TagState.PUBLISHED, TagState.INVALID]
)
def test_frozen_states_refuse_writes(state: TagState) -> None:
    with pytest.raises(ForbiddenChange, match="frozen"):
        add(state, [], [(P, IoV(1, 0, 1, 1))])
    with pytest.raises(ForbiddenChange, match="only be removed from OPEN"):
        plan_remove(tag(state), [], [])


def test_rewriting_what_is_there_is_no_change_in_any_state() -> None:
    existing = entries(IoV(1, 0, 1, 9))
    for state in TagState:
        assert add(state, existing, [(P, IoV(1, 0, 1, 9))]).empty


def test_open_tags_refuse_overlaps_also_within_one_write() -> None:
    with pytest.raises(ForbiddenChange, match="overlaps"):
        add(TagState.OPEN, [], [(P, IoV(1, 0, 1, 9)), (Q, IoV(1, 9, 1, 12))])
    ok = add(TagState.OPEN, [], [(P, IoV(1, 0, 1, 9)), (Q, IoV(1, 10, 1, 12))])
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


def test_a_write_into_a_tag_in_another_state_than_it_expects_is_refused() -> None:
    existing = entries(IoV(1, 0, 1, 9))
    for expected in (TagState.OPEN, TagState.RUNNING):
        for state in TagState:
            if state is expected:
                continue
            with pytest.raises(ForbiddenChange, match=f"is {state.value}: "):
                plan_add(tag(state), existing, [(P, IoV(1, 0, 1, 9))], state=expected)


def test_promotion_plan() -> None:
    staged = [PayloadIoV("s", Q, IoV(1, 5, 1, 19)), PayloadIoV("s", P, IoV(1, 20, -1, -1))]
    current = entries(IoV(1, 0, -1, -1), payload=Q)
    validated, running = GlobalTag("s", TagState.VALIDATED), GlobalTag("r", TagState.RUNNING)
    change = plan_promotion(validated, staged, running, current, ExpRun(1, 10))
    assert [(old.iov, iov) for old, iov in change.close] == [(IoV(1, 0, -1, -1), IoV(1, 0, 1, 9))]
    assert change.add == [(Q, IoV(1, 10, 1, 19)), (P, IoV(1, 20, -1, -1))]  # the first clipped
    after = apply(current, "r", change)
    assert plan_promotion(validated, staged, running, after, ExpRun(1, 10)).empty
    with pytest.raises(ForbiddenChange, match="only a VALIDATED tag"):
        plan_promotion(GlobalTag("s", TagState.OPEN), staged, running, after, ExpRun(1, 10))
    with pytest.raises(ForbiddenChange, match="promotion goes into a RUNNING tag"):
        plan_promotion(validated, staged, GlobalTag("r", TagState.OPEN), [], ExpRun(1, 10))
    with pytest.raises(CdbError, match="no payload valid from experiment 2 run 0"):
        plan_promotion(validated, staged[:1], running, current, ExpRun(2, 0))
    with pytest.raises(ForbiddenChange, match="would leave T0 without payload after 1,10,1,19"):
        plan_promotion(validated, staged[:1], running, current, ExpRun(1, 10))
