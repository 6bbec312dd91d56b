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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

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
class ExecutionRecord:
    """One algorithm execution of a strategy: which runs, which IoV, what came out."""

    runs: tuple[ExpRun, ...]
    execution: Execution
    iov: IoV | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "runs": [list(r) for r in self.runs],
            "iov": str(self.iov) if self.iov else None,
            "result": self.execution.result.value,
            "metrics": self.execution.metrics,
            "message": self.execution.message,
        }


@dataclass
class StrategyOutcome:
    """The result of one pass of a strategy over the runs of an iteration.

    ``records`` has every execution, including those superseded by a merge (useful for
    monitoring); ``payloads`` only the ones that made it into the output.
    """

    result: AlgorithmResult
    records: list[ExecutionRecord] = field(default_factory=list)
    payloads: list[tuple[str, IoV, PayloadDoc]] = field(default_factory=list)
    message: str = ""


@dataclass(frozen=True)
class _Unit:
    """Runs that a sequential strategy never splits, and where their IoV would start."""

    start: ExpRun
    runs: tuple[ExpRun, ...]


class _Executor:
    """Runs the algorithm on groups of runs and keeps a record of every execution."""

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
        self.records: list[ExecutionRecord] = []

    def __call__(self, runs: Sequence[ExpRun]) -> Execution:
        group = tuple(sorted(runs))
        data = sum_runs(self.per_run, group)
        context = AlgorithmContext(group, self.iteration, self.lookup, self.settings)
        try:
            execution = self.algorithm.execute(data, context)
        except B2CalError as exc:
            execution = Execution(AlgorithmResult.FAILURE, message=str(exc))
        self.records.append(ExecutionRecord(group, execution))
        return execution


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
) -> StrategyOutcome:
    """Execute ``algorithm`` over the runs of ``per_run`` inside ``requested`` by ``strategy``.

    ``settings`` are the calibration's expert settings, handed to the algorithm in its context.
    """
    runs = sorted(run for run in per_run if run in requested)
    execute = _Executor(algorithm, per_run, iteration, lookup, settings)
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
    outcome.records = execute.records
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
    execute.records[:] = [
        ExecutionRecord(r.runs, r.execution, final.get(id(r.execution))) for r in execute.records
    ]
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
