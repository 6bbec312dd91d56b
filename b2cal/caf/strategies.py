"""IoV strategies: how the runs of a request are grouped into algorithm executions and IoVs.

The strategies work on collector output kept per run, so regrouping runs never needs a new
collection. All of them turn groups into IoVs with :func:`~b2cal.core.iov.tile_iovs` (except
``simple_run_by_run``, whose IoVs are single runs by definition), so payload IoVs tile the
requested range with no gap or overlap.

Semantics follow the Belle II CAF:

* ``single_iov``: one execution over every run; one IoV over the requested range.
* ``sequential_run_by_run``: runs in order; a run whose execution says NOT_ENOUGH_DATA is merged
  with the next run and executed again; runs left over at the end are merged into the previous
  group.
* ``sequential_boundaries``: the same, with groups that start at given boundaries (from the
  algorithm, or from the configuration) instead of at every run.
* ``simple_run_by_run``: every run alone, no merging; a run without enough data is a failure
  of the whole calibration.

**Where executions run** is an :class:`ExecutionRunner`'s business: this process, one after the
other (:class:`InProcess`, the reference), or processes of their own
(:class:`b2cal.caf.executions.ProcessRunner`). A runner that runs several at once gets the
independent executions together: every run of ``simple_run_by_run``; every unit (a run, or the
runs between two boundaries) of the sequential strategies *speculatively*, since whether a unit
is executed alone depends on its predecessor's result. The serial rule is then replayed over
what came back: it takes an execution where it would have made it, runs the merged groups it
needs that nobody ran, and leaves the rest unused (``StrategyOutcome.discarded``). An execution
depends only on its data and its context (runs, iteration, the payload chain, the settings), so
payloads, IoVs, result codes and messages are those of the serial run; a unit that fails alone
but would have been merged fails nothing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from b2cal.caf.accumulator import Accumulator, sum_runs
from b2cal.caf.calibration import (
    Algorithm,
    AlgorithmContext,
    AlgorithmResult,
    Execution,
    ExpertSettings,
    PayloadDoc,
    PayloadLookup,
    Strategy,
    StrategyName,
)
from b2cal.core.iov import ExpRun, IoV, tile_iovs
from b2cal.errors import B2CalError


@dataclass(frozen=True)
class RunRange:
    """The requested range of a calibration, both ends inclusive."""

    first: ExpRun
    last: ExpRun

    def __post_init__(self) -> None:
        if self.last < self.first:
            raise B2CalError(f"run range ends ({self.last}) before it starts ({self.first})")

    def __contains__(self, run: object) -> bool:
        return isinstance(run, tuple) and self.first <= run <= self.last


@dataclass(frozen=True)
class Executed:
    """An execution as a runner hands it back: its outcome, where and when it ran.

    ``error`` is an internal error of the algorithm (an exception other than B2CalError, or
    its process dying), one line: raised only if the strategy uses this execution, since a
    speculative execution the serial rule would not have made must not fail anything.
    ``folder`` is where a runner kept the execution's files, if it keeps any.
    """

    runs: tuple[ExpRun, ...]
    execution: Execution
    process: int
    started: float
    ended: float
    error: str = ""
    folder: str = ""


class ExecutionRunner(Protocol):
    """Where the algorithm executions of one calibration iteration run."""

    #: How many executions may run at once: above 1, independent ones are handed over together.
    parallel: int

    def run(self, groups: Sequence[tuple[ExpRun, ...]]) -> list[Executed]:
        """Execute the algorithm once per group of runs (sorted), results in the same order."""
        ...

    def discard(self, unused: Sequence[Executed]) -> list[Executed]:
        """Keep executions that the strategy did not use apart from those it used; them as
        kept (their folders moved)."""
        ...


class InProcess:
    """Executions in this thread, one after the other: the serial reference, and what a caller
    that gives no runner gets (an exception from the algorithm is raised as it is)."""

    parallel = 1

    def __init__(
        self,
        algorithm: Algorithm,
        per_run: Mapping[ExpRun, Accumulator],
        iteration: int,
        lookup: PayloadLookup,
        settings: ExpertSettings | None,
    ) -> None:
        self.algorithm = algorithm
        self.per_run = per_run
        self.iteration = iteration
        self.lookup = lookup
        self.settings = settings

    def run(self, groups: Sequence[tuple[ExpRun, ...]]) -> list[Executed]:
        return [self._one(group) for group in groups]

    def _one(self, group: tuple[ExpRun, ...]) -> Executed:
        started = time.time()
        execution = execute_group(
            self.algorithm,
            sum_runs(self.per_run, group),
            AlgorithmContext(group, self.iteration, self.lookup, self.settings),
        )
        return Executed(group, execution, os.getpid(), started, time.time())

    def discard(self, unused: Sequence[Executed]) -> list[Executed]:
        return list(unused)


def execute_group(algorithm: Algorithm, data: Accumulator, context: AlgorithmContext) -> Execution:
    """One execution: a B2CalError from the algorithm is its FAILURE, with the error's line."""
    try:
        return algorithm.execute(data, context)
    except B2CalError as exc:
        return Execution(AlgorithmResult.FAILURE, message=str(exc))


@dataclass(frozen=True)
class ExecutionRecord:
    """One algorithm execution of a strategy: which runs, which IoV, what came out, and where
    and when it ran (process id, start and end as Unix times, its folder if it has one)."""

    runs: tuple[ExpRun, ...]
    execution: Execution
    iov: IoV | None = None
    process: int = 0
    started: float = 0.0
    ended: float = 0.0
    folder: str = ""

    @classmethod
    def of(cls, executed: Executed) -> ExecutionRecord:
        return cls(
            executed.runs,
            executed.execution,
            process=executed.process,
            started=executed.started,
            ended=executed.ended,
            folder=executed.folder,
        )

    def summary(self) -> dict[str, Any]:
        return {
            "runs": [list(r) for r in self.runs],
            "iov": str(self.iov) if self.iov else None,
            "result": self.execution.result.value,
            "metrics": self.execution.metrics,
            "message": self.execution.message,
            "process": self.process,
            "started": round(self.started, 3),
            "ended": round(self.ended, 3),
            **({"folder": self.folder} if self.folder else {}),
        }


@dataclass
class StrategyOutcome:
    """The result of one pass of a strategy over the runs of an iteration.

    ``records`` has every execution the serial rule makes, including those superseded by a
    merge (useful for monitoring); ``payloads`` only the ones that made it into the output;
    ``discarded`` the speculative executions the serial rule did not make.
    """

    result: AlgorithmResult
    records: list[ExecutionRecord] = field(default_factory=list)
    payloads: list[tuple[str, IoV, PayloadDoc]] = field(default_factory=list)
    message: str = ""
    discarded: list[ExecutionRecord] = field(default_factory=list)


@dataclass(frozen=True)
class _Unit:
    """Runs that a sequential strategy never splits, and where their IoV would start."""

    start: ExpRun
    runs: tuple[ExpRun, ...]


class _Executor:
    """The serial rule's executions, taken from what the runner ran ahead where it could; a
    record of every execution the rule makes."""

    def __init__(self, runner: ExecutionRunner) -> None:
        self.runner = runner
        self.ahead: dict[tuple[ExpRun, ...], Executed] = {}
        self.records: list[ExecutionRecord] = []

    def speculate(self, groups: Sequence[Sequence[ExpRun]]) -> None:
        """Run ``groups`` together now if the runner runs several at once (else each waits
        until the rule asks for it)."""
        if self.runner.parallel > 1 and len(groups) > 1:
            for executed in self.runner.run([tuple(sorted(g)) for g in groups]):
                self.ahead[executed.runs] = executed

    def __call__(self, runs: Sequence[ExpRun]) -> Execution:
        group = tuple(sorted(runs))
        executed = self.ahead.pop(group, None) or self.runner.run([group])[0]
        if executed.error:
            where = f"runs {group[0]}-{group[-1]}" if len(group) > 1 else f"run {group[0]}"
            raise B2CalError(f"the algorithm execution for {where} failed: {executed.error}")
        self.records.append(ExecutionRecord.of(executed))
        return executed.execution

    def unused(self) -> list[Executed]:
        """Executions run ahead that the rule did not take, in run order."""
        return [self.ahead[group] for group in sorted(self.ahead)]


def run_strategy(
    strategy: Strategy,
    algorithm: Algorithm,
    per_run: Mapping[ExpRun, Accumulator],
    requested: RunRange,
    *,
    iteration: int,
    lookup: PayloadLookup,
    open_ended: bool = False,
    settings: ExpertSettings | None = None,
    runner: ExecutionRunner | None = None,
) -> StrategyOutcome:
    """Execute ``algorithm`` over the runs of ``per_run`` inside ``requested`` by ``strategy``.

    ``settings`` are the calibration's expert settings, handed to the algorithm in its context.
    ``runner`` says where executions run (default: :class:`InProcess`, one after the other); it
    must execute this algorithm on this data with this context.
    """
    runs = sorted(run for run in per_run if run in requested)
    execute = _Executor(runner or InProcess(algorithm, per_run, iteration, lookup, settings))
    try:
        outcome = _by_strategy(strategy, algorithm, per_run, requested, runs, execute, open_ended)
    finally:
        discarded = execute.runner.discard(execute.unused())
    outcome.records = execute.records
    outcome.discarded = [ExecutionRecord.of(e) for e in discarded]
    return outcome


def _by_strategy(
    strategy: Strategy,
    algorithm: Algorithm,
    per_run: Mapping[ExpRun, Accumulator],
    requested: RunRange,
    runs: Sequence[ExpRun],
    execute: _Executor,
    open_ended: bool,
) -> StrategyOutcome:
    if not runs:
        return StrategyOutcome(
            AlgorithmResult.NOT_ENOUGH_DATA, message="no collector output in the requested runs"
        )
    if strategy.name is StrategyName.SINGLE_IOV:
        units = [_Unit(requested.first, tuple(runs))]
        outcome = _sequential(units, execute, requested, open_ended)
    elif strategy.name is StrategyName.SEQUENTIAL_RUN_BY_RUN:
        outcome = _sequential([_Unit(r, (r,)) for r in runs], execute, requested, open_ended)
    elif strategy.name is StrategyName.SEQUENTIAL_BOUNDARIES:
        boundaries = algorithm.boundaries(per_run)
        if boundaries is None:
            boundaries = list(strategy.boundaries)
        units = boundary_units(runs, boundaries)
        outcome = _sequential(units, execute, requested, open_ended)
    else:
        outcome = _simple_run_by_run(runs, execute, open_ended)
    return outcome


def boundary_units(runs: Sequence[ExpRun], boundaries: Sequence[ExpRun]) -> list[_Unit]:
    """Split ``runs`` (sorted) into units that start at each boundary holding data."""
    units: list[_Unit] = []
    cuts = sorted(set(boundaries))
    current: list[ExpRun] = []
    start = runs[0]
    for run in runs:
        passed = [b for b in cuts if start < b <= run]
        if passed and current:
            units.append(_Unit(start, tuple(current)))
            current, start = [], passed[-1]
        current.append(run)
    units.append(_Unit(start, tuple(current)))
    return units


def _sequential(
    units: Sequence[_Unit], execute: _Executor, requested: RunRange, open_ended: bool
) -> StrategyOutcome:
    """Execute unit by unit, merging a unit without enough data into the next one.

    Units left without enough data at the end go into the previous group. The IoV of a group
    starts where its first unit starts (the first group at the start of the requested range)
    and ends just before the next group.
    """
    execute.speculate([unit.runs for unit in units])
    groups: list[tuple[_Unit, Execution]] = []
    pending: list[_Unit] = []
    last: Execution | None = None
    for unit in units:
        pending.append(unit)
        last = execute([r for u in pending for r in u.runs])
        if last.result is AlgorithmResult.NOT_ENOUGH_DATA:
            continue
        if last.result is AlgorithmResult.FAILURE:
            return StrategyOutcome(AlgorithmResult.FAILURE, message=_describe(pending, last))
        groups.append((_merge(pending), last))
        pending = []
    if pending:
        if not groups:
            assert last is not None
            return StrategyOutcome(
                AlgorithmResult.NOT_ENOUGH_DATA, message=_describe(pending, last)
            )
        previous, _ = groups.pop()
        merged = _merge([previous, *pending])
        last = execute(merged.runs)
        if last.result in (AlgorithmResult.NOT_ENOUGH_DATA, AlgorithmResult.FAILURE):
            return StrategyOutcome(last.result, message=_describe([merged], last))
        groups.append((merged, last))
    starts = [requested.first] + [unit.start for unit, _ in groups[1:]]
    iovs = tile_iovs(starts, requested.last, open_ended=open_ended)
    return _outcome(groups, iovs, execute)


def _simple_run_by_run(
    runs: Sequence[ExpRun], execute: _Executor, open_ended: bool
) -> StrategyOutcome:
    execute.speculate([(run,) for run in runs])
    groups: list[tuple[_Unit, Execution]] = []
    for run in runs:
        execution = execute([run])
        if execution.result in (AlgorithmResult.NOT_ENOUGH_DATA, AlgorithmResult.FAILURE):
            unit = _Unit(run, (run,))
            return StrategyOutcome(execution.result, message=_describe([unit], execution))
        groups.append((_Unit(run, (run,)), execution))
    iovs = [IoV.from_runs(run, run) for run in runs]
    if open_ended:
        iovs[-1] = iovs[-1].open_ended()
    return _outcome(groups, iovs, execute)


def _outcome(
    groups: Sequence[tuple[_Unit, Execution]], iovs: Sequence[IoV], execute: _Executor
) -> StrategyOutcome:
    """Attach IoVs to the final execution of each group and collect their payloads."""
    final = {id(execution): iov for (_, execution), iov in zip(groups, iovs, strict=True)}
    execute.records[:] = [replace(r, iov=final.get(id(r.execution))) for r in execute.records]
    payloads = [
        (name, iov, doc)
        for (_, execution), iov in zip(groups, iovs, strict=True)
        for name, doc in sorted(execution.payloads.items())
    ]
    iterate = any(e.result is AlgorithmResult.ITERATE for _, e in groups)
    return StrategyOutcome(
        AlgorithmResult.ITERATE if iterate else AlgorithmResult.OK, payloads=payloads
    )


def _merge(units: Sequence[_Unit]) -> _Unit:
    return _Unit(units[0].start, tuple(r for u in units for r in u.runs))


def _describe(units: Sequence[_Unit], execution: Execution) -> str:
    runs = [r for u in units for r in u.runs]
    where = f"runs {runs[0]}-{runs[-1]}" if len(runs) > 1 else f"run {runs[0]}"
    detail = f": {execution.message}" if execution.message else ""
    return f"{execution.result.value} for {where}{detail}"
