"""Algorithm executions in processes of their own, through the workspace.

An algorithm's fit holds the interpreter while it runs: as a thread of the driver it stalls
every other calibration's steps (a 0.1-s algorithm waited 7 s behind a 9.5-s fit). So the
drivers (``caf run``, the ``calibrate`` flow) run executions in an :class:`AlgorithmPool`: warm
worker processes of the local backend (:class:`~b2cal.backends.local.LocalBackend`, which
already kills a worker on cancel, replaces one that dies and leaves nothing behind when its
driver dies), kept apart from the collector jobs so an execution never queues behind them.

Everything goes through the iteration's ``algorithm/`` folder
(:class:`~b2cal.caf.workspace.AlgorithmArea`): the driver writes the algorithm with its settings
and each run's merged collector output once; each execution gets an order (its runs, the
iteration, the payload chain) and leaves its outcome and a record of its process and times,
the record last. An execution therefore depends only on its data and its context, as the plugin
contract says, and the same inputs give the same payloads wherever it ran.

A :class:`ProcessRunner` is the strategy's :class:`~b2cal.caf.strategies.ExecutionRunner` for one
iteration: it keeps at most ``workers`` of its executions in the pool at a time, so the
executions of two calibrations take turns instead of one waiting for all of the other's.
"""

from __future__ import annotations

import functools
import os
import pickle
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Self

from b2cal.backends.base import Job, JobHandle, JobState
from b2cal.backends.local import LocalBackend
from b2cal.caf.accumulator import RunAccumulators, sum_runs
from b2cal.caf.calibration import (
    Algorithm,
    AlgorithmContext,
    AlgorithmResult,
    Execution,
    ExpertSettings,
)
from b2cal.caf.chain import PayloadChain
from b2cal.caf.records import ExecutionDone, ExecutionOrder
from b2cal.caf.strategies import Executed, execute_group
from b2cal.caf.workspace import AlgorithmArea, ExecutionArea
from b2cal.core.iov import ExpRun
from b2cal.errors import B2CalError, Interrupted

#: What a pool's workers run: one execution, given its folder.
TARGET = "b2cal.caf.executions:execute"
#: How often a runner looks at its stop event while its executions run.
_STOP_CHECK_SECONDS = 0.5
#: Executions run below the driver but above collector jobs (niceness 10): with every core
#: collecting, a calibration whose collection has ended gets to its payloads first.
EXECUTION_NICENESS = 5


# --- inside a worker process --------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _algorithm(path: str, stamp: tuple[int, int, int]) -> tuple[Algorithm, ExpertSettings | None]:
    """The algorithm and settings of an iteration, unpickled once per worker (``stamp``: the
    file's inode, size and mtime, so an iteration whose inputs were written again is read
    again)."""
    with open(path, "rb") as handle:
        algorithm, settings = pickle.load(handle)
    return algorithm, settings


def execute(folder: Path) -> int:
    """Run one execution (the pool's job target): read its order and its runs' data, execute,
    keep the outcome and then the record. An exception of the algorithm other than B2CalError
    is recorded as the execution's error (traceback in its ``error.log``), not raised: whether
    it matters is the strategy's to say."""
    execution = ExecutionArea(folder)
    order = execution.order()
    if order is None:
        raise B2CalError(f"{folder} holds no execution order")
    inputs = AlgorithmArea(folder.parent.parent)
    path = inputs.algorithm_path
    stat = path.stat()
    algorithm, settings = _algorithm(str(path), (stat.st_ino, stat.st_size, stat.st_mtime_ns))
    group = order.group()
    data = sum_runs({run: inputs.read_run(run) for run in group}, group)
    context = AlgorithmContext(group, order.iteration, PayloadChain(order.chain).lookup, settings)
    started = time.time()
    outcome: Execution | None
    try:
        outcome, error = execute_group(algorithm, data, context), ""
    except Exception as exc:  # the algorithm's bug: recorded, the strategy decides
        execution.error_log.write_text(traceback.format_exc())
        outcome = None
        error = f"internal error {type(exc).__name__}: {exc} (traceback in {execution.error_log})"
    done = ExecutionDone(
        process=os.getpid(), started=started, ended=time.time(), error=error, token=order.token
    )
    execution.write_outcome(outcome, done)
    return 0


# --- in the driver ------------------------------------------------------------------------------
class AlgorithmPool:
    """``workers`` warm processes for algorithm executions (no more than this machine has
    cores: at a batch site ``[backend] workers`` may count slots elsewhere), shared by every
    calibration of a driver, started at once so they import while the collection runs. Close
    it when done (a ``with`` block); the processes also end if the driver dies."""

    def __init__(self, workers: int) -> None:
        self.workers = max(1, min(workers, os.cpu_count() or 1))
        self.backend = LocalBackend(
            self.workers, retries=0, poll_seconds=_STOP_CHECK_SECONDS, niceness=EXECUTION_NICENESS
        )
        self.backend.preload([TARGET])

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self.backend.close()

    def runner(
        self,
        area: AlgorithmArea,
        algorithm: Algorithm,
        settings: ExpertSettings | None,
        per_run: RunAccumulators,
        *,
        iteration: int,
        chain: Sequence[Path],
        stop: threading.Event | None = None,
    ) -> ProcessRunner:
        """A runner for one iteration: its inputs written to ``area`` (afresh), the workers
        told to import the algorithm's module meanwhile."""
        kind = type(algorithm)
        self.backend.preload([f"{kind.__module__}:{kind.__qualname__}"])
        try:
            pickled = pickle.dumps((algorithm, settings), protocol=5)
        except Exception as exc:
            raise B2CalError(
                f"the algorithm {kind.__qualname__} cannot be sent to a process of its own "
                f"({type(exc).__name__}: {exc}): define it at the top level of a module"
            ) from exc
        area.write_inputs(pickled, per_run)
        return ProcessRunner(self, area, iteration, list(chain), stop)


class ProcessRunner:
    """The executions of one iteration in an :class:`AlgorithmPool`."""

    def __init__(
        self,
        pool: AlgorithmPool,
        area: AlgorithmArea,
        iteration: int,
        chain: list[Path],
        stop: threading.Event | None,
    ) -> None:
        self.pool = pool
        self.parallel = pool.workers
        self.area = area
        self.iteration = iteration
        self.chain = chain
        self.stop = stop
        #: Names this runner's orders: a record left by a process of an earlier driver (one
        #: that outlived it by a moment) is not taken for an answer.
        self.token = uuid.uuid4().hex

    def run(self, groups: Sequence[tuple[ExpRun, ...]]) -> list[Executed]:
        backend = self.pool.backend
        areas = [self._order(group) for group in groups]
        waiting = deque(areas)
        running: dict[str, JobHandle] = {}
        failed: dict[Path, str] = {}
        try:
            while waiting or running:
                while waiting and len(running) < self.parallel:
                    area = waiting.popleft()
                    job = Job(f"algorithm {area.root.name}", area.root, TARGET)
                    (handle,) = backend.submit([job])
                    running[handle.job_id] = handle
                if self.stop is not None and self.stop.is_set():
                    raise Interrupted(f"algorithm executions in {self.area.root}")
                backend.wait(list(running.values()), _STOP_CHECK_SECONDS)
                for job_id, report in backend.poll(list(running.values())).items():
                    if report.state.finished:
                        handle = running.pop(job_id)
                        if report.state is not JobState.DONE:
                            failed[handle.job.directory] = report.reason or report.state.value
        except B2CalError:
            if self.stop is not None and self.stop.is_set():  # the pool closed as we stopped
                raise Interrupted(f"algorithm executions in {self.area.root}") from None
            raise
        except BaseException:
            backend.cancel(list(running.values()))
            raise
        if self.stop is not None and self.stop.is_set():  # ended by the stop (pool closed)
            raise Interrupted(f"algorithm executions in {self.area.root}")
        return [
            self._outcome(group, area, failed) for group, area in zip(groups, areas, strict=True)
        ]

    def _order(self, group: tuple[ExpRun, ...]) -> ExecutionArea:
        area = self.area.execution(group)
        order = ExecutionOrder(
            runs=[(r.exp, r.run) for r in group],
            iteration=self.iteration,
            chain=self.chain,
            token=self.token,
        )
        recorded = area.order()
        if recorded is not None and recorded != order:
            raise B2CalError(f"{area.root} already holds another execution ({recorded.runs})")
        area.write_order(order)
        return area

    def _outcome(
        self, group: tuple[ExpRun, ...], area: ExecutionArea, failed: dict[Path, str]
    ) -> Executed:
        folder = self._relative(area)
        done = area.done()
        if done is not None and done.token != self.token:
            done = None
        if done is None:
            reason = failed.get(area.root, "it left no record")
            failure = Execution(AlgorithmResult.FAILURE, message=reason)
            return Executed(group, failure, 0, 0.0, 0.0, reason, folder)
        if done.error:
            failure = Execution(AlgorithmResult.FAILURE, message=done.error)
            return Executed(
                group, failure, done.process, done.started, done.ended, done.error, folder
            )
        outcome = area.execution()
        return Executed(group, outcome, done.process, done.started, done.ended, "", folder)

    def _relative(self, area: ExecutionArea) -> str:
        """Where an execution's files are, from its iteration's folder (what records say)."""
        return str(area.root.relative_to(self.area.root.parent))

    def discard(self, unused: Sequence[Executed]) -> list[Executed]:
        kept = []
        for executed in unused:
            moved = self.area.discard(ExecutionArea(self.area.root.parent / executed.folder))
            kept.append(replace(executed, folder=self._relative(moved)))
        return kept
