"""IoV strategies on synthetic per-run counts: grouping, merging, tiling (with hypothesis)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from b2cal.caf.accumulator import Accumulator
from b2cal.caf.calibration import (
    Algorithm,
    AlgorithmContext,
    AlgorithmResult,
    Execution,
    Strategy,
    StrategyName,
)
from b2cal.caf.strategies import RunRange, run_strategy
from b2cal.core.iov import ExpRun, IoV

pytestmark = pytest.mark.unit

THRESHOLD = 10


class Threshold(Algorithm):
    """OK when the group holds at least THRESHOLD entries; the payload lists its runs."""

    def __init__(self, boundaries: list[ExpRun] | None = None) -> None:
        self._boundaries = boundaries

    def execute(self, data: Accumulator, context: AlgorithmContext) -> Execution:
        n = data.get("n", 0)
        if n < THRESHOLD:
            return Execution(AlgorithmResult.NOT_ENOUGH_DATA, message=f"{n} entries")
        return Execution(
            AlgorithmResult.OK, payloads={"P": {"runs": [r.run for r in context.runs]}}
        )

    def boundaries(self, per_run: Any) -> list[ExpRun] | None:
        return self._boundaries


def per_run(counts: dict[int, int]) -> dict[ExpRun, Accumulator]:
    return {ExpRun(1, r): Accumulator(n=n) for r, n in counts.items()}


def run(name: StrategyName, counts: dict[int, int], first: int, last: int, **kw: Any) -> Any:
    boundaries = kw.pop("boundaries", ())
    algorithm = kw.pop("algorithm", Threshold())
    strategy = Strategy(name=name, boundaries=tuple(boundaries))
    requested = RunRange(ExpRun(1, first), ExpRun(1, last))
    return run_strategy(
        strategy, algorithm, per_run(counts), requested, iteration=0, lookup=lambda n, r: None, **kw
    )


def groups(outcome: Any) -> list[tuple[str, list[int]]]:
    return [(str(iov), doc["runs"]) for _, iov, doc in outcome.payloads]


def test_single_iov_covers_the_requested_range() -> None:
    outcome = run(StrategyName.SINGLE_IOV, {2: 5, 3: 6}, 1, 9)
    assert outcome.result is AlgorithmResult.OK
    assert groups(outcome) == [("1,1,1,9", [2, 3])]


def test_single_iov_open_ended() -> None:
    outcome = run(StrategyName.SINGLE_IOV, {2: 50}, 1, 9, open_ended=True)
    assert groups(outcome) == [("1,1,-1,-1", [2])]


def test_single_iov_not_enough_data() -> None:
    outcome = run(StrategyName.SINGLE_IOV, {2: 5}, 1, 9)
    assert outcome.result is AlgorithmResult.NOT_ENOUGH_DATA
    assert outcome.payloads == []
    assert "run e1r2" in outcome.message


def test_run_by_run_merges_low_statistics_with_the_next_run() -> None:
    outcome = run(StrategyName.SEQUENTIAL_RUN_BY_RUN, {1: 20, 2: 3, 3: 20, 4: 20}, 1, 4)
    assert groups(outcome) == [("1,1,1,1", [1]), ("1,2,1,3", [2, 3]), ("1,4,1,4", [4])]


def test_run_by_run_merges_leftovers_into_the_previous_group() -> None:
    outcome = run(StrategyName.SEQUENTIAL_RUN_BY_RUN, {1: 20, 2: 20, 3: 3, 4: 3}, 1, 6)
    assert groups(outcome) == [("1,1,1,1", [1]), ("1,2,1,6", [2, 3, 4])]


def test_run_by_run_first_iov_starts_at_the_requested_start_and_gaps_are_covered() -> None:
    outcome = run(StrategyName.SEQUENTIAL_RUN_BY_RUN, {3: 20, 7: 20}, 1, 10, open_ended=True)
    assert groups(outcome) == [("1,1,1,6", [3]), ("1,7,-1,-1", [7])]


def test_run_by_run_records_superseded_executions() -> None:
    outcome = run(StrategyName.SEQUENTIAL_RUN_BY_RUN, {1: 3, 2: 20}, 1, 2)
    results = [(r.runs, r.execution.result, r.iov) for r in outcome.records]
    assert results == [
        ((ExpRun(1, 1),), AlgorithmResult.NOT_ENOUGH_DATA, None),
        ((ExpRun(1, 1), ExpRun(1, 2)), AlgorithmResult.OK, IoV(1, 1, 1, 2)),
    ]


def test_run_by_run_with_too_little_data_overall() -> None:
    outcome = run(StrategyName.SEQUENTIAL_RUN_BY_RUN, {1: 3, 2: 3}, 1, 2)
    assert outcome.result is AlgorithmResult.NOT_ENOUGH_DATA
    assert "runs e1r1-e1r2" in outcome.message


def test_sequential_boundaries_from_configuration() -> None:
    counts = {r: 20 for r in range(1, 9)}
    outcome = run(StrategyName.SEQUENTIAL_BOUNDARIES, counts, 1, 8, boundaries=[ExpRun(1, 4)])
    assert groups(outcome) == [("1,1,1,3", [1, 2, 3]), ("1,4,1,8", [4, 5, 6, 7, 8])]


def test_sequential_boundaries_start_at_the_boundary_not_the_first_run_with_data() -> None:
    counts = {1: 20, 6: 20}
    outcome = run(StrategyName.SEQUENTIAL_BOUNDARIES, counts, 1, 8, boundaries=[ExpRun(1, 4)])
    assert groups(outcome) == [("1,1,1,3", [1]), ("1,4,1,8", [6])]


def test_sequential_boundaries_from_the_algorithm_win_and_merge_when_short() -> None:
    counts = {1: 20, 2: 20, 3: 2, 4: 20}
    algorithm = Threshold(boundaries=[ExpRun(1, 2), ExpRun(1, 3)])
    outcome = run(StrategyName.SEQUENTIAL_BOUNDARIES, counts, 1, 4, algorithm=algorithm)
    assert groups(outcome) == [("1,1,1,1", [1]), ("1,2,1,2", [2]), ("1,3,1,4", [3, 4])]


def test_simple_run_by_run_keeps_runs_alone() -> None:
    outcome = run(StrategyName.SIMPLE_RUN_BY_RUN, {1: 20, 3: 20}, 1, 4)
    assert groups(outcome) == [("1,1,1,1", [1]), ("1,3,1,3", [3])]


def test_simple_run_by_run_fails_on_a_short_run() -> None:
    outcome = run(StrategyName.SIMPLE_RUN_BY_RUN, {1: 20, 2: 3}, 1, 4)
    assert outcome.result is AlgorithmResult.NOT_ENOUGH_DATA
    assert "run e1r2" in outcome.message


def test_no_data_in_range() -> None:
    outcome = run(StrategyName.SINGLE_IOV, {20: 50}, 1, 9)
    assert outcome.result is AlgorithmResult.NOT_ENOUGH_DATA


def test_failure_stops_the_strategy() -> None:
    class Failing(Threshold):
        def execute(self, data: Accumulator, context: AlgorithmContext) -> Execution:
            return Execution(AlgorithmResult.FAILURE, message="fit did not converge")

    outcome = run(StrategyName.SEQUENTIAL_RUN_BY_RUN, {1: 20}, 1, 1, algorithm=Failing())
    assert outcome.result is AlgorithmResult.FAILURE
    assert "fit did not converge" in outcome.message


def assert_tiles(iovs: list[IoV], first: int, last: int, open_ended: bool) -> None:
    """Every requested run lies in exactly one IoV, and IoVs lie inside the range."""
    for r in range(first, last + 1):
        assert sum(iov.contains(ExpRun(1, r)) for iov in iovs) == 1, (r, iovs)
    assert iovs[0].first == ExpRun(1, first)
    assert iovs[-1].is_open_ended == open_ended
    if not open_ended:
        assert not any(iov.contains(ExpRun(1, last + 1)) for iov in iovs)
    for a, b in itertools.pairwise(iovs):
        assert not a.overlaps(b)


counts_strategy = st.dictionaries(
    st.integers(min_value=0, max_value=40), st.integers(min_value=0, max_value=30), min_size=1
)


@pytest.mark.parametrize("name", [StrategyName.SEQUENTIAL_RUN_BY_RUN, StrategyName.SINGLE_IOV])
@settings(max_examples=300, deadline=None)
@given(counts=counts_strategy, open_ended=st.booleans(), margin=st.integers(0, 5))
def test_payload_iovs_tile_the_requested_range(
    name: StrategyName, counts: dict[int, int], open_ended: bool, margin: int
) -> None:
    first, last = min(counts), max(counts) + margin
    outcome = run(name, counts, first, last, open_ended=open_ended)
    if sum(counts.values()) < THRESHOLD:
        assert outcome.result is AlgorithmResult.NOT_ENOUGH_DATA
        return
    assert outcome.result is AlgorithmResult.OK
    assert_tiles([iov for _, iov, _ in outcome.payloads], first, last, open_ended)
    # every run with data is used exactly once, and every group has enough data
    used = [r for _, _, doc in outcome.payloads for r in doc["runs"]]
    assert sorted(used) == sorted(counts)
    for _, _, doc in outcome.payloads:
        assert sum(counts[r] for r in doc["runs"]) >= THRESHOLD


@settings(max_examples=200, deadline=None)
@given(
    counts=counts_strategy,
    boundaries=st.lists(st.integers(0, 45), max_size=5),
    open_ended=st.booleans(),
)
def test_boundaries_tile_too(
    counts: dict[int, int], boundaries: list[int], open_ended: bool
) -> None:
    first, last = min(counts), max(counts)
    cuts = [ExpRun(1, b) for b in boundaries]
    outcome = run(
        StrategyName.SEQUENTIAL_BOUNDARIES,
        counts,
        first,
        last,
        boundaries=cuts,
        open_ended=open_ended,
    )
    if outcome.result is AlgorithmResult.NOT_ENOUGH_DATA:
        assert sum(counts.values()) < THRESHOLD
        return
    assert_tiles([iov for _, iov, _ in outcome.payloads], first, last, open_ended)
