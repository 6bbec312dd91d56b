"""Running calibrations: iterations of one calibration, and many in dependency order.

This is what ``b2cal caf run`` does without Prefect (like basf2's ``b2caf-prompt-run``). Each
step it takes (plan and run a collection, run the strategy, write outputs) is a function of
files on disk, so the Prefect flows reuse the same steps as tasks, and a rerun with the same
arguments resumes where the last one stopped.
"""

from __future__ import annotations

import fcntl
import json
import logging
import threading
import traceback
import uuid
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from b2cal.backends.base import Backend
from b2cal.caf.atomic_file import atomic_write_json
from b2cal.caf.calibration import AlgorithmResult, Calibration
from b2cal.caf.chain import PayloadChain
from b2cal.caf.graph import topological_order, upstream
from b2cal.caf.iov import ExpRun
from b2cal.caf.iteration import (
    CollectionFailed,
    IterationResult,
    NoProgress,
    Progress,
    iteration_payloads,
    run_iteration,
)
from b2cal.caf.outputs import (
    OUTPUTDB,
    CalibrationOutcome,
    files_digest,
    read_outcome,
    validate,
    write_final_output,
    write_outcome,
)
from b2cal.caf.strategies import RunRange
from b2cal.catalog.storage import InputFile, find_files
from b2cal.errors import B2CalError

log = logging.getLogger(__name__)

RUN_FILE = "b2cal-run.json"
LOCK_FILE = ".lock"


@dataclass(frozen=True)
class CalibrationInput:
    """What to calibrate: a run range of one experiment on a storage element."""

    storage: Path
    exp: int
    first_run: int
    last_run: int
    open_ended: bool = False
    input_databases: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        if self.exp < 0 or self.first_run < 0:
            raise B2CalError("experiment and run numbers must be >= 0")
        if self.last_run < self.first_run:
            raise B2CalError(f"invalid run range {self.first_run}-{self.last_run}")

    @property
    def requested(self) -> RunRange:
        return RunRange(ExpRun(self.exp, self.first_run), ExpRun(self.exp, self.last_run))

    def files(self, streams: Sequence[str]) -> list[InputFile]:
        runs = range(self.first_run, self.last_run + 1)
        return find_files(self.storage, self.exp, runs, streams)


@dataclass
class CalibrationRunner:
    """Runs one calibration to its end: iterations, then final output and validation."""

    calibration: Calibration
    directory: Path
    selection: CalibrationInput
    files: list[InputFile]
    upstream_databases: list[Path]
    backend: Backend
    calibration_run: str
    progress: Progress = field(default_factory=NoProgress)
    stop: threading.Event | None = None

    def run(self) -> CalibrationOutcome:
        cal = self.calibration
        last: Path | None = None
        iterations: list[IterationResult] = []
        for iteration in range(cal.max_iterations):
            if self.stop is not None and self.stop.is_set():
                raise CollectionFailed(f"interrupted before iteration {iteration}; rerun to resume")
            iteration_dir = self.directory / "iterations" / str(iteration)
            previous = [last / "localdb"] if last is not None else []
            chain = [*previous, *self.upstream_databases, *self.selection.input_databases]
            result = run_iteration(
                cal,
                iteration,
                iteration_dir,
                files=self.files,
                chain=chain,
                requested=self.selection.requested,
                open_ended=self.selection.open_ended,
                backend=self.backend,
                progress=self.progress,
                stop=self.stop,
            )
            iterations.append(result)
            last = iteration_dir
            if result.result is not AlgorithmResult.ITERATE:
                break
        final = iterations[-1]
        code, message = final.result, final.message
        # Whether the limit was hit without convergence is recorded (as the CAF does) whenever
        # the algorithm still asked to iterate, whatever max_iterations is.
        converged = None
        if code is AlgorithmResult.ITERATE:  # limit reached: keep the last payloads (CAF)
            code, converged = AlgorithmResult.OK, False
        elif cal.max_iterations > 1:
            converged = code is AlgorithmResult.OK
        if code is AlgorithmResult.OK and not final.payloads:
            code, message = AlgorithmResult.FAILURE, "the algorithm ended OK without any payload"
        outcome = CalibrationOutcome(
            name=cal.name,
            result=code,
            iterations=len(iterations),
            message=message,
            converged=converged,
            events=final.events,
            jobs=final.jobs,
            bad_files=final.bad_files,
        )
        if code is AlgorithmResult.OK:
            assert last is not None
            self._finish(outcome, last, final.iteration)
        write_outcome(self.directory, outcome)
        return outcome

    def _finish(self, outcome: CalibrationOutcome, last: Path, iteration: int) -> None:
        self.progress.stage(self.calibration.name, "writing output and validating")
        payloads = iteration_payloads(last)
        bad = {b.path for b in outcome.bad_files}
        used = [f for f in self.files if str(f.path) not in bad]
        chain = PayloadChain([*self.upstream_databases, *self.selection.input_databases])
        write_final_output(
            self.directory,
            payloads,
            calibration=self.calibration.name,
            calibration_run=self.calibration_run,
            iteration=iteration,
            inputs_digest=files_digest(used),
            upstream=chain.entries(),
        )
        outcome.iovs = sorted({iov for _, iov, _ in payloads}, key=lambda i: i.first)
        outcome.validation = validate(self.calibration.validation, payloads)
        if outcome.converged is False:
            outcome.message = (
                f"not converged after {outcome.iterations} iterations (max_iterations); "
                "last payloads kept"
            )


def _folder(output: Path) -> None:
    if output.exists() and not output.is_dir():
        raise B2CalError(f"output {output} is a file, not a folder")
    output.mkdir(parents=True, exist_ok=True)


@contextmanager
def output_lock(output: Path) -> Iterator[None]:
    """Hold ``output`` for one run at a time; a second run on it is refused, not interleaved.

    An advisory ``flock`` on ``<output>/.lock``: the system releases it when the process ends,
    however it ends, so a killed run never leaves the output locked.
    """
    _folder(output)
    with (output / LOCK_FILE).open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise B2CalError(
                f"output {output} is in use by another b2cal caf run; wait for it to end"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prepare_output(output: Path, arguments: Mapping[str, Any]) -> str:
    """Claim ``output`` for a run with ``arguments``, or check that it was made with them.

    Returns the calibration-run id (kept across resumes). Refuses an output folder that holds
    the results of other arguments: mixing them would give payloads of no defined origin.
    """
    _folder(output)
    path = output / RUN_FILE
    if path.exists():
        recorded = json.loads(path.read_text())
        before = recorded.get("arguments", {})
        if before != dict(arguments):
            keys = sorted(set(before) | set(arguments))
            detail = "; ".join(
                f"{k}: {before.get(k)!r} then, {arguments.get(k)!r} now"
                for k in keys
                if before.get(k) != arguments.get(k)
            )
            raise B2CalError(
                f"output {output} was made with other arguments ({detail}); "
                "use another --output or the same arguments to resume"
            )
        return str(recorded["calibration_run"])
    if any(p.name != LOCK_FILE for p in output.iterdir()):
        raise B2CalError(f"output {output} is not empty and was not made by b2cal caf run")
    run_id = uuid.uuid4().hex[:12]
    atomic_write_json(path, {"arguments": dict(arguments), "calibration_run": run_id})
    return run_id


def run_calibrations(
    calibrations: Mapping[str, Calibration],
    selection: CalibrationInput,
    output: Path,
    backend: Backend,
    *,
    calibration_run: str,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
) -> dict[str, CalibrationOutcome]:
    """Run every calibration after its dependencies, independent ones in parallel.

    A calibration whose dependency did not end OK is not run (FAILURE, saying which). Finished
    calibrations (OK or NOT_ENOUGH_DATA in ``result.json``) are not run again. An interrupt
    (KeyboardInterrupt) sets ``stop``: running collections are cancelled, nothing new starts,
    and the interrupt is raised again once every calibration thread has stopped.
    """
    output = output.resolve()
    order = topological_order(calibrations)
    shown: Progress = progress if progress is not None else NoProgress()
    stop = stop if stop is not None else threading.Event()
    files = {name: selection.files(calibrations[name].input_streams) for name in order}
    for name in order:
        check_inputs(output / name, files[name])
    futures: dict[str, Future[CalibrationOutcome]] = {}

    def drive(name: str) -> CalibrationOutcome:
        calibration = calibrations[name]
        for dep in calibration.depends_on:
            dep_outcome = futures[dep].result()
            if dep_outcome.result is not AlgorithmResult.OK:
                shown.stage(name, f"not run: {dep} ended {dep_outcome.result.value}")
                return CalibrationOutcome(
                    name,
                    AlgorithmResult.FAILURE,
                    message=f"not run: dependency {dep} ended {dep_outcome.result.value}",
                )
        directory = output / name
        done = read_outcome(directory)
        if done is not None and done.result is not AlgorithmResult.FAILURE:
            shown.stage(name, f"done earlier: {done.result.value}")
            return done
        runner = CalibrationRunner(
            calibration=calibration,
            directory=directory,
            selection=selection,
            files=files[name],
            upstream_databases=[output / dep / OUTPUTDB for dep in upstream(name, calibrations)],
            backend=backend,
            calibration_run=calibration_run,
            progress=shown,
            stop=stop,
        )
        try:
            outcome = runner.run()
        except B2CalError as exc:  # includes CollectionFailed
            outcome = CalibrationOutcome(name, AlgorithmResult.FAILURE, message=str(exc))
        except Exception as exc:  # a bug in one calibration must not stop the others
            directory.mkdir(parents=True, exist_ok=True)
            (directory / "error.log").write_text(traceback.format_exc())
            message = f"internal error {type(exc).__name__}: {exc} (see {directory}/error.log)"
            outcome = CalibrationOutcome(name, AlgorithmResult.FAILURE, message=message)
        shown.stage(name, f"finished: {outcome.result.value}")
        return outcome

    pool = ThreadPoolExecutor(max_workers=max(1, len(order)), thread_name_prefix="caf")
    try:
        for name in order:  # dependencies are submitted first, so their futures exist
            futures[name] = pool.submit(drive, name)
        return {name: futures[name].result() for name in order}
    except BaseException:
        stop.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


INPUTS_FILE = "inputs.json"


def check_inputs(directory: Path, files: Sequence[InputFile]) -> None:
    """Record a calibration's input files on its first run; refuse a resume on other files.

    Finished jobs, iterations and dependencies' payloads were made from the files seen first:
    a resume that quietly took files which landed (or changed size) since would mix inputs
    within one output and give wrong provenance.
    """
    listing = [[str(f.path), f.path.stat().st_size] for f in sorted(files)]
    path = directory / INPUTS_FILE
    if not path.exists():
        atomic_write_json(path, listing)
        return
    recorded = [tuple(item) for item in json.loads(path.read_text())]
    current = [tuple(item) for item in listing]
    if recorded != current:
        added = len(set(current) - set(recorded))
        gone = len(set(recorded) - set(current))
        raise B2CalError(
            f"the input files of {directory.name} changed since {directory.parent} was started "
            f"({added} new or changed, {gone} gone or changed); "
            "use a new --output to calibrate the files as they are now"
        )
