"""One calibration's way through its steps, for every driver: what its next step is, read from
its workspace; the loop that takes the steps; and what a failure leaves.

``caf run``'s driver (:mod:`b2cal.caf.driver`, threads in one process) and the ``calibrate``
flow (Prefect tasks, collection in batches) both call :func:`drive` with a :class:`Steps`
of their own, so there is one iteration loop and one failure policy: a calibration that
cannot finish ends with a FAILURE outcome in its workspace (:func:`record_failure`), whoever
drove it, and a rerun tries it again. Where a step executes is the runner's business (a later
change moves algorithm executions into processes of their own behind :meth:`Steps.algorithm`).
"""

from __future__ import annotations

import enum
import threading
import traceback
from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import Protocol

from b2cal.caf.calibration import AlgorithmResult
from b2cal.caf.records import CalibrationOutcome, IterationResult
from b2cal.caf.workspace import CalibrationArea
from b2cal.errors import B2CalError, Interrupted

ITERATE = AlgorithmResult.ITERATE


class StepKind(enum.StrEnum):
    COLLECT = "collect"
    ALGORITHM = "algorithm"
    FINISH = "finish"
    DONE = "done"


@dataclass(frozen=True)
class Step:
    """What comes next: collect iteration ``iteration``, run its algorithm, finish, or nothing
    (the calibration ended OK or NOT_ENOUGH_DATA before)."""

    kind: StepKind
    iteration: int | None = None

    def __str__(self) -> str:
        return self.kind.value if self.iteration is None else f"{self.kind} {self.iteration}"


def iterations_run(area: CalibrationArea, max_iterations: int) -> list[IterationResult]:
    """The results of the iterations recorded in ``area``, in order, up to the first that is
    missing or does not ask to iterate: what :func:`next_step` goes on from and what finishing
    reads."""
    results: list[IterationResult] = []
    for iteration in range(max_iterations):
        result = area.iteration(iteration).result()
        if result is None:
            break
        results.append(result)
        if result.result is not AlgorithmResult.ITERATE:
            break
    return results


def next_step(area: CalibrationArea, max_iterations: int, collected: Container[int] = ()) -> Step:
    """The next step of the calibration in ``area``, from what its workspace records.

    ``collected``: the iterations whose collection this driver has completed (a collection
    is idempotent, so after a restart an iteration without a result is collected again,
    quickly: its finished jobs are kept). A failed calibration (FAILURE outcome) is taken up
    again from its iterations."""
    done = area.outcome()
    if done is not None and done.finished:
        return Step(StepKind.DONE)
    results = iterations_run(area, max_iterations)
    if len(results) == max_iterations or (results and results[-1].result is not ITERATE):
        return Step(StepKind.FINISH)
    iteration = len(results)
    kind = StepKind.ALGORITHM if iteration in collected else StepKind.COLLECT
    return Step(kind, iteration)


class Steps(Protocol):
    """How a driver executes the steps of one calibration."""

    def collect(self, iteration: int) -> None: ...

    def algorithm(self, iteration: int) -> None: ...

    def finish(self) -> CalibrationOutcome: ...


def drive(
    area: CalibrationArea,
    max_iterations: int,
    steps: Steps,
    *,
    stop: threading.Event | None = None,
    on_step: Callable[[Step], None] | None = None,
) -> CalibrationOutcome:
    """Take the calibration's steps until it has an outcome (its recorded one if it ended
    before). ``on_step`` hears of each step before it is taken (the flow moves the state
    database with it). Raises what a step raised, and Interrupted once ``stop`` is set."""
    collected: set[int] = set()
    while True:
        step = next_step(area, max_iterations, collected)
        if step.kind is StepKind.DONE:
            outcome = area.outcome()
            assert outcome is not None
            return outcome
        if stop is not None and stop.is_set():
            raise Interrupted(f"{area.name} before its {step}")
        if on_step is not None:
            on_step(step)
        if step.kind is StepKind.COLLECT:
            assert step.iteration is not None
            steps.collect(step.iteration)
            collected.add(step.iteration)
        elif step.kind is StepKind.ALGORITHM:
            assert step.iteration is not None
            steps.algorithm(step.iteration)
        else:
            return steps.finish()


def failure_message(error: Exception, area: CalibrationArea | None = None) -> str:
    """The one line a failure leaves: a B2CalError's own, or an internal error (its traceback
    in the calibration's ``error.log`` when ``area`` is given: call it while handling)."""
    if isinstance(error, B2CalError):
        return str(error)
    if area is None:
        return f"internal error {type(error).__name__}: {error}"
    area.error_log.write_text(traceback.format_exc())
    return f"internal error {type(error).__name__}: {error} (see {area.error_log})"


def record_failure(area: CalibrationArea, error: Exception) -> CalibrationOutcome:
    """The failure policy: the calibration ends FAILURE with the error's line, recorded in its
    workspace (a rerun takes it up again from its iterations)."""
    outcome = CalibrationOutcome(
        calibration=area.name,
        result=AlgorithmResult.FAILURE,
        message=failure_message(error, area),
    )
    area.write_outcome(outcome)
    return outcome
