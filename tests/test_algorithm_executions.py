"""Algorithm executions side by side and in processes of their own (b2cal.caf.executions).

The serial rule replayed over executions run ahead must give what the serial run gives —
payloads, IoVs, result codes, messages, the list of executions — whatever the strategy and
whichever units lack data or fail alone; executions the rule did not make are kept apart.
Then the same with real processes: where executions ran (never the driver's process), what an
algorithm's bug or a killed process leaves, and two calibrations' executions overlapping.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
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
from b2cal.caf.executions import AlgorithmPool
from b2cal.caf.records import ExecutionOrder
from b2cal.caf.strategies import (
    Executed,
    ExecutionRunner,
    InProcess,
    RunRange,
    StrategyOutcome,
    run_strategy,
)
from b2cal.caf.workspace import AlgorithmArea
from b2cal.core.iov import ExpRun
from b2cal.errors import B2CalError

pytestmark = pytest.mark.unit

THRESHOLD = 10
#: A group of fewer entries than this fails outright (FAILURE, or a bug: see Fussy).
BROKEN = 3


class Fussy(Algorithm):
    """NOT_ENOUGH_DATA under THRESHOLD entries; a group under BROKEN entries fails (FAILURE,
    or ZeroDivisionError with ``bug``): such a unit fails alone but is fine once merged."""

    def __init__(self, bug: bool = False, boundaries: list[ExpRun] | None = None) -> None:
        self.bug = bug
        self._boundaries = boundaries

    def execute(self, data: Accumulator, context: AlgorithmContext) -> Execution:
        n = data.get("n", 0)
        if n < BROKEN:
            if self.bug:
                raise ZeroDivisionError(f"{n} entries in {list(map(str, context.runs))}")
            return Execution(AlgorithmResult.FAILURE, message=f"only {n} entries")
        if n < THRESHOLD:
            return Execution(AlgorithmResult.NOT_ENOUGH_DATA, message=f"{n} entries")
        payload = {"runs": [r.run for r in context.runs], "n": n}
        return Execution(AlgorithmResult.OK, payloads={"P": payload}, metrics={"n": n})

    def boundaries(self, per_run: Any) -> list[ExpRun] | None:
        return self._boundaries


class Killed(Algorithm):
    """Kills its own process when executed over run 2 alone (a worker dying mid-fit)."""

    def execute(self, data: Accumulator, context: AlgorithmContext) -> Execution:
        if context.runs == (ExpRun(1, 2),):
            os.kill(os.getpid(), signal.SIGKILL)
        return Execution(AlgorithmResult.OK, payloads={"P": {"n": data.get("n", 0)}})


class Rendezvous(Algorithm):
    """OK only if the execution named ``partner`` runs at the same time as this one: each
    leaves a file in ``meeting`` and waits (at most 20 s) for the other's."""

    def __init__(self, me: str, partner: str, meeting: Path) -> None:
        self.me, self.partner, self.meeting = me, partner, meeting

    def execute(self, data: Accumulator, context: AlgorithmContext) -> Execution:
        (self.meeting / self.me).touch()
        deadline = time.monotonic() + 20
        while not (self.meeting / self.partner).exists():
            if time.monotonic() > deadline:
                return Execution(AlgorithmResult.FAILURE, message=f"{self.partner} never came")
            time.sleep(0.01)
        return Execution(AlgorithmResult.OK, payloads={"P": {"me": self.me}})


class AheadInProcess(InProcess):
    """The serial reference's executions, handed over together as a parallel runner's are
    (the replay's logic without processes, so hypothesis can try many cases)."""

    parallel = 4

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.batches: list[int] = []

    def run(self, groups: Sequence[tuple[ExpRun, ...]]) -> list[Executed]:
        self.batches.append(len(groups))
        return [self._guarded(group) for group in groups]

    def _guarded(self, group: tuple[ExpRun, ...]) -> Executed:
        try:
            return self._one(group)
        except Exception as exc:  # as a process runner records a bug
            failure = Execution(AlgorithmResult.FAILURE, message=str(exc))
            return Executed(group, failure, os.getpid(), 0.0, 0.0, f"bug: {exc}")


def per_run(counts: dict[int, int]) -> dict[ExpRun, Accumulator]:
    return {ExpRun(1, r): Accumulator(n=n) for r, n in counts.items()}


def strategy_of(name: StrategyName, boundaries: Sequence[int] = ()) -> Strategy:
    return Strategy(name=name, boundaries=tuple(ExpRun(1, b) for b in boundaries))


def run(
    name: StrategyName,
    algorithm: Algorithm,
    counts: dict[int, int],
    runner: Callable[[dict[ExpRun, Accumulator]], ExecutionRunner] | None = None,
    boundaries: Sequence[int] = (),
) -> StrategyOutcome:
    """``algorithm`` over runs with ``counts`` entries by strategy ``name``, its executions
    where ``runner`` (given the data) puts them, else one after the other here."""
    data = per_run(counts)
    requested = RunRange(ExpRun(1, min(counts)), ExpRun(1, max(counts)))
    return run_strategy(
        strategy_of(name, boundaries),
        algorithm,
        data,
        requested,
        iteration=0,
        lookup=no_payloads,
        runner=runner(data) if runner else None,
    )


def no_payloads(name: str, exprun: ExpRun) -> None:
    return None


def ahead(algorithm: Algorithm) -> Callable[[dict[ExpRun, Accumulator]], AheadInProcess]:
    return lambda data: AheadInProcess(algorithm, data, 0, no_payloads, None)


def computed(outcome: StrategyOutcome) -> Any:
    """What serial and parallel runs must agree on (not where or when executions ran)."""
    records = [(r.runs, r.execution, r.iov) for r in outcome.records]
    return outcome.result, outcome.message, outcome.payloads, records


def outcome_or_error(call: Any) -> Any:
    """The outcome, or which group's bug was raised (serially as it is, else as a B2CalError
    naming it)."""
    try:
        return computed(call())
    except (B2CalError, ZeroDivisionError) as exc:
        return ("raised", str(exc).rpartition("entries in ")[2])


counts_strategy = st.dictionaries(
    st.integers(1, 12), st.integers(0, 25), min_size=1, max_size=10
).map(lambda d: dict(sorted(d.items())))


@pytest.mark.parametrize("name", list(StrategyName))
@pytest.mark.parametrize("bug", [False, True])
@given(counts=counts_strategy, boundaries=st.lists(st.integers(1, 12), max_size=3))
@settings(max_examples=60, deadline=None)
def test_run_ahead_gives_what_the_serial_rule_gives(
    name: StrategyName, bug: bool, counts: dict[int, int], boundaries: list[int]
) -> None:
    """Every strategy, runs with enough data, too little, or so little that a unit fails
    alone (or raises): identical outcome, and the rule used what it took from the runner."""
    algorithm = Fussy(bug=bug)
    cuts = sorted(set(boundaries)) if name is StrategyName.SEQUENTIAL_BOUNDARIES else []
    serial = outcome_or_error(lambda: run(name, algorithm, counts, boundaries=cuts))
    parallel = outcome_or_error(lambda: run(name, algorithm, counts, ahead(algorithm), cuts))
    assert parallel == serial


def test_a_unit_that_fails_alone_but_is_merged_fails_nothing() -> None:
    """Run 2 alone FAILs (and with ``bug`` raises), but the serial rule never executes it
    alone: run 1 lacks data, so runs 1-2 are executed together."""
    counts = {1: 8, 2: 2, 3: 12}
    for bug in (False, True):
        algorithm = Fussy(bug)
        outcome = run(StrategyName.SEQUENTIAL_RUN_BY_RUN, algorithm, counts, ahead(algorithm))
        assert outcome.result is AlgorithmResult.OK
        assert [r.runs for r in outcome.records] == [
            (ExpRun(1, 1),),
            (ExpRun(1, 1), ExpRun(1, 2)),
            (ExpRun(1, 3),),
        ]
        assert [r.runs for r in outcome.discarded] == [(ExpRun(1, 2),)]


def test_simple_run_by_run_hands_every_run_over_at_once() -> None:
    runner: list[AheadInProcess] = []

    def made(data: dict[ExpRun, Accumulator]) -> AheadInProcess:
        runner.append(ahead(Fussy())(data))
        return runner[0]

    outcome = run(StrategyName.SIMPLE_RUN_BY_RUN, Fussy(), {1: 11, 2: 12, 3: 13}, made)
    assert outcome.result is AlgorithmResult.OK
    assert runner[0].batches == [3]
    assert not outcome.discarded


# --- in processes of their own ------------------------------------------------------------------
@pytest.fixture(scope="module")
def pool() -> Any:
    with AlgorithmPool(2) as shared:
        yield shared


def in_pool(
    pool: AlgorithmPool,
    folder: Path,
    name: StrategyName,
    algorithm: Algorithm,
    counts: dict[int, int],
    boundaries: Sequence[int] = (),
) -> StrategyOutcome:
    """As :func:`run`, the executions in ``pool``, their files in ``folder/algorithm``."""
    area = AlgorithmArea(folder / "algorithm")

    def runner(data: dict[ExpRun, Accumulator]) -> ExecutionRunner:
        return pool.runner(area, algorithm, None, data, iteration=0, chain=[])

    return run(name, algorithm, counts, runner, boundaries)


@pytest.mark.parametrize("name", list(StrategyName))
def test_executions_in_processes_give_the_serial_outcome(
    pool: AlgorithmPool, tmp_path: Path, name: StrategyName
) -> None:
    """Runs 3 and 5 alone lack data: the sequential strategies merge 3 with 4 and 5 with 6
    (and never use 4 or 6 alone); simple_run_by_run stops at run 3."""
    counts = {1: 12, 2: 14, 3: 4, 4: 11, 5: 5, 6: 30, 7: 12}
    cuts = [1, 3, 4, 5, 7] if name is StrategyName.SEQUENTIAL_BOUNDARIES else []
    serial = run(name, Fussy(), counts, boundaries=cuts)
    parallel = in_pool(pool, tmp_path, name, Fussy(), counts, cuts)
    assert computed(parallel) == computed(serial)
    driver = os.getpid()
    assert all(r.process not in (0, driver) for r in parallel.records)
    assert all(0 < r.started <= r.ended for r in parallel.records)
    executions = tmp_path / "algorithm" / "executions"
    discarded = tmp_path / "algorithm" / "discarded"
    assert sorted(p.name for p in executions.iterdir()) == sorted(
        Path(r.folder).name for r in parallel.records
    )
    kept_apart = sorted(p.name for p in discarded.iterdir()) if discarded.exists() else []
    assert kept_apart == sorted(Path(r.folder).name for r in parallel.discarded)
    assert all(r.folder.startswith("algorithm/discarded/") for r in parallel.discarded)
    if name in (StrategyName.SEQUENTIAL_RUN_BY_RUN, StrategyName.SEQUENTIAL_BOUNDARIES):
        assert parallel.result is AlgorithmResult.OK
        assert "e1r4" in kept_apart  # run 4 alone: run ahead, never used
        assert len({r.process for r in parallel.records}) == 2  # side by side
    if name is StrategyName.SIMPLE_RUN_BY_RUN:
        assert parallel.result is AlgorithmResult.NOT_ENOUGH_DATA
        assert "e1r4" in kept_apart  # runs after the first that lacks data: not used


def test_a_bug_in_an_execution_used_fails_with_its_traceback_kept(
    pool: AlgorithmPool, tmp_path: Path
) -> None:
    with pytest.raises(B2CalError) as raised:
        in_pool(pool, tmp_path, StrategyName.SIMPLE_RUN_BY_RUN, Fussy(bug=True), {1: 12, 2: 1})
    message = str(raised.value)
    assert message.startswith("the algorithm execution for run e1r2 failed: internal error ")
    assert "ZeroDivisionError: 1 entries in ['e1r2']" in message
    log = tmp_path / "algorithm" / "executions" / "e1r2" / "error.log"
    assert f"(traceback in {log})" in message
    assert "ZeroDivisionError" in log.read_text()
    assert "\n" not in message


def test_a_bug_in_an_execution_run_ahead_but_not_used_fails_nothing(
    pool: AlgorithmPool, tmp_path: Path
) -> None:
    counts = {1: 8, 2: 2, 3: 12}
    outcome = in_pool(pool, tmp_path, StrategyName.SEQUENTIAL_RUN_BY_RUN, Fussy(True), counts)
    assert computed(outcome) == computed(
        run(StrategyName.SEQUENTIAL_RUN_BY_RUN, Fussy(True), counts)
    )
    assert (tmp_path / "algorithm" / "discarded" / "e1r2" / "error.log").is_file()


def test_a_killed_execution_process_fails_its_execution_and_the_pool_goes_on(
    pool: AlgorithmPool, tmp_path: Path
) -> None:
    with pytest.raises(B2CalError, match=r"the worker process died .*SIGKILL"):
        in_pool(pool, tmp_path / "a", StrategyName.SIMPLE_RUN_BY_RUN, Killed(), {1: 5, 2: 5})
    again = in_pool(pool, tmp_path / "b", StrategyName.SIMPLE_RUN_BY_RUN, Fussy(), {1: 12, 2: 13})
    assert again.result is AlgorithmResult.OK


def test_an_algorithm_that_cannot_be_sent_to_a_process_is_refused_in_one_line(
    pool: AlgorithmPool, tmp_path: Path
) -> None:
    class Local(Fussy):
        pass

    with pytest.raises(B2CalError, match=r"cannot be sent to a process of its own .*top level"):
        in_pool(pool, tmp_path, StrategyName.SINGLE_IOV, Local(), {1: 12})


def test_two_calibrations_executions_overlap(pool: AlgorithmPool, tmp_path: Path) -> None:
    """Two calibrations' executions, each waiting for the other's: both end OK only if they
    ran at the same time, in two processes other than the driver's."""
    import threading

    meeting = tmp_path / "meeting"
    meeting.mkdir()
    outcomes: dict[str, StrategyOutcome] = {}

    def calibration(me: str, partner: str) -> None:
        algorithm = Rendezvous(me, partner, meeting)
        folder = tmp_path / me
        outcomes[me] = in_pool(pool, folder, StrategyName.SINGLE_IOV, algorithm, {1: 1})

    threads = [
        threading.Thread(target=calibration, args=("T0", "Alignment")),
        threading.Thread(target=calibration, args=("Alignment", "T0")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    (t0,), (alignment,) = outcomes["T0"].records, outcomes["Alignment"].records
    assert t0.execution.result is AlgorithmResult.OK, t0.execution.message
    assert alignment.execution.result is AlgorithmResult.OK, alignment.execution.message
    assert {t0.process, alignment.process}.isdisjoint({os.getpid()})
    assert t0.process != alignment.process
    assert t0.started < alignment.ended and alignment.started < t0.ended


class Niceness(Algorithm):
    def execute(self, data: Accumulator, context: AlgorithmContext) -> Execution:
        return Execution(AlgorithmResult.OK, payloads={"P": {}}, metrics={"nice": os.nice(0)})


def test_executions_run_below_the_driver_and_above_collector_jobs(
    pool: AlgorithmPool, tmp_path: Path
) -> None:
    from b2cal.backends.local import WORKER_NICENESS
    from b2cal.caf.executions import EXECUTION_NICENESS

    (record,) = in_pool(pool, tmp_path, StrategyName.SINGLE_IOV, Niceness(), {1: 1}).records
    assert EXECUTION_NICENESS < WORKER_NICENESS
    assert record.execution.metrics["nice"] == min(19, os.nice(0) + EXECUTION_NICENESS)


class Slow(Algorithm):
    def execute(self, data: Accumulator, context: AlgorithmContext) -> Execution:
        time.sleep(30)
        return Execution(AlgorithmResult.OK, payloads={"P": {}})


@pytest.mark.parametrize("close", [False, True])
def test_a_stop_interrupts_running_executions_even_as_the_pool_closes(
    tmp_path: Path, close: bool
) -> None:
    """A flow told to stop sets its stop event and closes its pools at once: either way the
    executions end as an interrupt (Interrupted), never as the calibration's failure."""
    import threading

    from b2cal.errors import Interrupted

    stop = threading.Event()
    with AlgorithmPool(2) as own:
        area = AlgorithmArea(tmp_path / "algorithm")
        data = per_run({1: 1, 2: 1})
        runner = own.runner(area, Slow(), None, data, iteration=0, chain=[], stop=stop)

        def stop_soon() -> None:
            time.sleep(1.0)
            stop.set()
            if close:
                own.close()

        threading.Thread(target=stop_soon).start()
        started = time.monotonic()
        with pytest.raises(Interrupted):
            runner.run([(ExpRun(1, 1),), (ExpRun(1, 2),)])
        assert time.monotonic() - started < 10


def test_a_record_left_by_an_earlier_driver_is_not_taken_for_an_answer(
    pool: AlgorithmPool, tmp_path: Path
) -> None:
    """An execution folder whose record answers another runner's order (a process of a
    driver killed a moment before) is executed again, not read."""
    counts = {1: 12}
    first = in_pool(pool, tmp_path, StrategyName.SINGLE_IOV, Fussy(), counts)
    done = tmp_path / "algorithm" / "executions" / "e1r1" / "done.json"
    left = done.read_text()
    area = AlgorithmArea(tmp_path / "algorithm")
    runner = pool.runner(area, Fussy(), None, per_run(counts), iteration=0, chain=[])
    area.execution((ExpRun(1, 1),)).write_order(
        ExecutionOrder(runs=[(1, 1)], iteration=0, chain=[], token=runner.token)
    )
    done.parent.mkdir(parents=True, exist_ok=True)
    done.write_text(left)  # the earlier driver's record, written after the inputs were reset
    (again,) = runner.run([(ExpRun(1, 1),)])
    assert again.execution == first.records[0].execution
    assert json.loads(done.read_text())["token"] == runner.token


def test_run_algorithm_with_a_pool_redone_after_a_crash_gives_the_serial_result(
    small_storage: Path, tmp_path: Path
) -> None:
    """The step killed after its executions, before its record, and done again in a pool
    over what the crash left (a stale algorithm/ folder): the result of the serial step."""
    from b2cal.backends.local import LocalBackend
    from b2cal.caf.plan import CalibrationRequest
    from b2cal.caf.registry import load
    from b2cal.caf.steps import collect, plan, run_algorithm
    from b2cal.caf.workspace import Workspace

    calibration = load("ChannelT0")
    request = CalibrationRequest(exp=1, first_run=1, last_run=4, storage=small_storage)
    results = {}
    with LocalBackend(2) as backend, AlgorithmPool(2) as own:
        for mode in ("serial", "pool"):
            workspace = Workspace(tmp_path / mode)
            plan(workspace, request, {"ChannelT0": calibration})
            collect(workspace, calibration, 0, backend)
            results[mode] = run_algorithm(
                workspace, calibration, 0, pool=own if mode == "pool" else None
            )
        iteration = Workspace(tmp_path / "pool").calibration("ChannelT0").iteration(0)
        (iteration.root / "result.json").unlink()  # killed before its record
        stale = iteration.algorithm.root / "executions" / "e1r2"
        assert stale.is_dir()
        again = run_algorithm(Workspace(tmp_path / "pool"), calibration, 0, pool=own)
    assert results["pool"].computed() == results["serial"].computed()
    assert again.computed() == results["serial"].computed()
    assert not (iteration.algorithm.root / "runs").exists()  # inputs dropped with the result
