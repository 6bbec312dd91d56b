"""The local driver of ``b2cal caf run``: the engine's steps in a loop, calibrations in parallel.

:func:`calibrate` drives one calibration through its steps with the lifecycle every driver
shares (:func:`b2cal.caf.lifecycle.drive`: the next step read from the workspace, one failure
policy), the steps running in this thread; :func:`run_calibrations` starts every calibration
as soon as its dependencies have ended (a :class:`graphlib.TopologicalSorter` with
``get_ready``/``done``), so independent calibrations run at the same time. The ``calibrate``
flow drives the same lifecycle with Prefect tasks as its steps.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from b2cal.backends.base import Backend
from b2cal.caf.calibration import AlgorithmResult, Calibration
from b2cal.caf.executions import AlgorithmPool
from b2cal.caf.graph import sorter
from b2cal.caf.lifecycle import drive, record_failure
from b2cal.caf.progress import NoProgress, Progress, plural
from b2cal.caf.records import CalibrationOutcome
from b2cal.caf.steps import collect, finish, run_algorithm
from b2cal.caf.workspace import Workspace
from b2cal.errors import B2CalError, Interrupted

log = logging.getLogger("b2cal.caf")


def calibrate(
    workspace: Workspace,
    calibration: Calibration,
    backend: Backend,
    *,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
    pool: AlgorithmPool | None = None,
) -> CalibrationOutcome:
    """Run one calibration to its end, resuming from whatever its workspace holds; its
    algorithm executions in ``pool`` (else in this thread).

    A calibration that ended OK or NOT_ENOUGH_DATA before is not run again. One that cannot
    finish (collector jobs failing, an algorithm FAILURE, a bug: traceback in ``error.log``)
    ends FAILURE, recorded, without raising; an interrupt raises Interrupted.
    """
    shown = progress or NoProgress()
    name = calibration.name
    area = workspace.calibration(name)

    class Here:
        """The steps in this thread, the collection's jobs on ``backend``."""

        def collect(self, iteration: int) -> None:
            collect(workspace, calibration, iteration, backend, progress=shown, stop=stop)

        def algorithm(self, iteration: int) -> None:
            run_algorithm(workspace, calibration, iteration, progress=shown, pool=pool, stop=stop)

        def finish(self) -> CalibrationOutcome:
            return finish(workspace, calibration, progress=shown)

    with area.lock():
        done = area.outcome()
        if done is not None and done.finished:
            shown.stage(name, f"done earlier: {done.result.value}")
            return done
        resumed = bool(area.iterations())
        log.info(
            "%s: %s (%s)",
            name,
            "resumed" if resumed else "started",
            plural(calibration.max_iterations, "iteration", "at most"),
        )
        try:
            outcome = drive(area, calibration.max_iterations, Here(), stop=stop)
        except Interrupted:
            log.warning("%s: interrupted", name)
            raise
        except B2CalError as exc:  # collector jobs that keep failing, a broken chain
            if stop is not None and stop.is_set():  # a consequence of the interrupt
                raise Interrupted(f"{name}: {exc}") from exc
            outcome = record_failure(area, exc)
        except Exception as exc:  # a bug in one calibration must not stop the others
            outcome = record_failure(area, exc)
    log.info(
        "%s: finished %s%s",
        name,
        outcome.result.value,
        f": {outcome.message}" if outcome.message else "",
    )
    shown.stage(name, f"finished: {outcome.result.value}")
    return outcome


def run_calibrations(
    workspace: Workspace,
    calibrations: Mapping[str, Calibration],
    backend: Backend,
    *,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
    pool: AlgorithmPool | None = None,
) -> dict[str, CalibrationOutcome]:
    """Run every calibration of a planned workspace, each as soon as its dependencies ended,
    their algorithm executions in ``pool`` (shared: they take turns) or else in their threads.

    A calibration whose dependency did not end OK is not run (FAILURE, saying which; nothing
    is recorded for it, so a rerun tries it again). An interrupt (KeyboardInterrupt, also
    SIGTERM turned into one) sets ``stop``: running collections are cancelled, nothing new
    starts, and the interrupt is raised again once every calibration has stopped.
    """
    shown = progress or NoProgress()
    stop = stop if stop is not None else threading.Event()
    graph = sorter(calibrations)
    outcomes: dict[str, CalibrationOutcome] = {}
    running: dict[Future[CalibrationOutcome], str] = {}
    threads = ThreadPoolExecutor(max_workers=max(1, len(calibrations)), thread_name_prefix="caf")
    try:
        while graph.is_active():
            for name in graph.get_ready():
                blocked = _failed_dependency(calibrations[name], outcomes)
                if blocked is not None:
                    shown.stage(name, f"not run: {blocked}")
                    log.warning("%s: not run: %s", name, blocked)
                    outcomes[name] = CalibrationOutcome(
                        calibration=name,
                        result=AlgorithmResult.FAILURE,
                        message=f"not run: {blocked}",
                    )
                    graph.done(name)
                    continue
                future = threads.submit(
                    calibrate,
                    workspace,
                    calibrations[name],
                    backend,
                    progress=shown,
                    stop=stop,
                    pool=pool,
                )
                running[future] = name
            if not running:
                continue
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                name = running.pop(future)
                outcomes[name] = future.result()
                graph.done(name)
    except BaseException:
        stop.set()
        raise
    finally:
        threads.shutdown(wait=True, cancel_futures=True)
    order = workspace.run_record().calibrations
    return {name: outcomes[name] for name in order if name in outcomes}


def _failed_dependency(
    calibration: Calibration, outcomes: Mapping[str, CalibrationOutcome]
) -> str | None:
    for dep in calibration.depends_on:
        outcome = outcomes[dep]
        if outcome.result is not AlgorithmResult.OK:
            return f"dependency {dep} ended {outcome.result.value}"
    return None
