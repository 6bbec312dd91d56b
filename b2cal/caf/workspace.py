"""The workspace: the one owner of the layout of a calibration run's output folder.

::

    <output>/b2cal-run.json                 RunRecord: arguments (identity), calibration-run id
    <output>/b2cal.log                      the run log, a timestamped line per event
    <output>/<Calibration>/
        calibration.json                    CalibrationRecord: config, input files, chain
        .lock                               held by whoever drives this calibration
        result.json                         CalibrationOutcome (written last)
        error.log                           traceback of an internal error
        outputdb/                           basf2-style local database of the final payloads
        provenance/                         a sidecar per final payload
        iterations/<i>/
            result.json                     IterationResult (written last)
            collector.pkl                   the collector and its settings
            localdb/                        the iteration's payloads (next iteration's chain)
            algorithm/                      inputs and outputs of the algorithm executions:
                algorithm.pkl               the algorithm and its settings
                runs/e<exp>r<run>.pkl       the merged collector output of each requested run
                                            (removed once the iteration has its result)
                executions/<runs>/          one execution (e1r3, or e1r3-e1r5 for a group of
                                            runs): order.json, execution.pkl,
                                            error.log, done.json (last)
                discarded/<runs>/           executions run ahead that the strategy did not use
            jobs/<NNNN>/                    one collector job:
                spec.json  submission.json  output.pkl  status.json (last)  job.log

No other module spells these names: everything reaches them through the path objects below,
which read and write their own records. Every record is written atomically and the one that
says "done" last, so the existence of a record is a reliable "this step is finished".

**Locking is per calibration**: whoever runs a step of a calibration holds ``.lock`` (an
advisory ``flock``, released by the system however the process ends). The calibrations of one
output can therefore be driven by separate processes (the Prefect flow runs of one request)
without blocking each other, while two drivers of the same calibration cannot collide. The
lock is the thread's that took it (re-entrant for that thread, so a driver may hold it around
the steps it calls): :mod:`b2cal.caf.locks`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from b2cal.caf.accumulator import RunAccumulators
from b2cal.caf.locks import hold, is_held
from b2cal.caf.records import (
    CalibrationOutcome,
    CalibrationRecord,
    ExecutionDone,
    ExecutionOrder,
    IterationResult,
    JobSpec,
    JobStatus,
    JobSubmission,
    RunRecord,
)
from b2cal.core.files import atomic_write_bytes, write_scratch
from b2cal.core.iov import ExpRun
from b2cal.core.localdb import PROVENANCE_FOLDER
from b2cal.errors import ArgumentsChanged, CalibrationBusy, WorkspaceError

RUN_RECORD = "b2cal-run.json"
RUN_LOG = "b2cal.log"
_LOCK = ".lock"

log = logging.getLogger("b2cal.caf")


# --- jobs, iterations, calibrations ------------------------------------------------------------
def _numbered(folder: Path) -> list[tuple[int, Path]]:
    """The numbered subfolders of ``folder`` (jobs, iterations) and their numbers, in order."""
    if not folder.is_dir():
        return []
    found = [(int(p.name), p) for p in folder.iterdir() if p.is_dir() and p.name.isdigit()]
    return sorted(found)


def _remove_numbered(folder: Path, count: int) -> None:
    """Remove the numbered subfolders of ``folder`` numbered ``count`` and up."""
    for number, path in _numbered(folder):
        if number >= count:
            shutil.rmtree(path)


class JobArea:
    """The folder of one collector job."""

    def __init__(self, root: Path, index: int) -> None:
        self.root = root
        self.index = index

    @classmethod
    def at(cls, root: Path) -> JobArea:
        """The job whose folder is ``root`` (what a backend hands a job)."""
        return cls(Path(root), int(Path(root).name))

    @property
    def log_path(self) -> Path:
        """What the job wrote while it ran (its traceback, if it failed)."""
        return self.root / "job.log"

    def spec(self) -> JobSpec | None:
        return JobSpec.read(self.root / "spec.json")

    def write_spec(self, spec: JobSpec) -> None:
        """Write the spec; a job whose spec changed loses everything it had (outputs of
        another plan must never be merged)."""
        if self.spec() == spec:
            return
        if self.root.exists():
            shutil.rmtree(self.root)
        spec.write(self.root / "spec.json")

    def status(self) -> JobStatus | None:
        return JobStatus.read(self.root / "status.json")

    def write_status(self, status: JobStatus) -> None:
        status.write(self.root / "status.json")

    @property
    def done(self) -> bool:
        """Whether the job finished, with the spec it has now."""
        status = self.status()
        if status is None or status.state != "done":
            return False
        spec = self.spec()
        return spec is not None and status.spec_digest == spec.digest()

    def forget_status(self) -> None:
        """Before an attempt: the job is not finished until it writes a new status."""
        (self.root / "status.json").unlink(missing_ok=True)

    def forget_submission(self) -> None:
        """Resubmitted by hand: its attempts start again from none."""
        (self.root / "submission.json").unlink(missing_ok=True)

    def submission(self) -> JobSubmission | None:
        return JobSubmission.read(self.root / "submission.json")

    def write_submission(self, submission: JobSubmission) -> None:
        submission.write(self.root / "submission.json")

    def output(self) -> RunAccumulators:
        with (self.root / "output.pkl").open("rb") as handle:
            result: RunAccumulators = pickle.load(handle)
        return result

    def write_output(self, output: RunAccumulators) -> None:
        atomic_write_bytes(self.root / "output.pkl", pickle.dumps(output, protocol=5))


class ExecutionArea:
    """The folder of one algorithm execution run in a process of its own."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def error_log(self) -> Path:
        return self.root / "error.log"

    def order(self) -> ExecutionOrder | None:
        return ExecutionOrder.read(self.root / "order.json")

    def write_order(self, order: ExecutionOrder) -> None:
        write_scratch(self.root / "order.json", order.model_dump_json().encode())

    def done(self) -> ExecutionDone | None:
        return ExecutionDone.read(self.root / "done.json")

    def execution(self) -> Any:
        """The execution's outcome (an ``Execution``), pickled by the process that ran it."""
        with (self.root / "execution.pkl").open("rb") as handle:
            return pickle.load(handle)

    def write_outcome(self, execution: Any, done: ExecutionDone) -> None:
        """Keep the outcome, then the record that says the execution ended (last). Scratch
        files: the driver reads them once the process said it is done, and a driver that runs
        the iteration again writes everything afresh."""
        if execution is not None:
            write_scratch(self.root / "execution.pkl", pickle.dumps(execution, protocol=5))
        write_scratch(self.root / "done.json", done.model_dump_json().encode())


class AlgorithmArea:
    """The inputs and outputs of an iteration's algorithm executions in processes of their own
    (``iterations/<i>/algorithm``): written afresh each time the iteration's algorithm runs."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def algorithm_path(self) -> Path:
        return self.root / "algorithm.pkl"

    def run_path(self, exprun: ExpRun) -> Path:
        return self.root / "runs" / f"{exprun}.pkl"

    def write_inputs(self, algorithm: bytes, per_run: RunAccumulators) -> None:
        """Start afresh: the algorithm and its settings (pickled by the caller) and each run's
        collector output, one file per run (an execution reads only its runs)."""
        shutil.rmtree(self.root, ignore_errors=True)
        for exprun, accumulator in per_run.items():
            write_scratch(self.run_path(exprun), pickle.dumps(accumulator, protocol=5))
        write_scratch(self.algorithm_path, algorithm)

    def forget_runs(self) -> None:
        """Remove the runs' copies of the collector output once the iteration has its result
        (the job outputs keep it)."""
        shutil.rmtree(self.root / "runs", ignore_errors=True)

    def read_run(self, exprun: ExpRun) -> Any:
        with self.run_path(exprun).open("rb") as handle:
            return pickle.load(handle)

    def execution(self, runs: tuple[ExpRun, ...]) -> ExecutionArea:
        """The folder of the execution over ``runs`` (sorted; a strategy's groups are runs in
        a row, so the first and last run name it)."""
        name = f"{runs[0]}-{runs[-1]}" if len(runs) > 1 else str(runs[0])
        return ExecutionArea(self.root / "executions" / name)

    def discard(self, execution: ExecutionArea) -> ExecutionArea:
        """Move an execution the strategy did not use to ``discarded/``, apart from the rest."""
        target = self.root / "discarded" / execution.root.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(target, ignore_errors=True)
        execution.root.rename(target)
        return ExecutionArea(target)


class IterationArea:
    """The folder of one iteration of a calibration."""

    def __init__(self, root: Path, iteration: int) -> None:
        self.root = root
        self.iteration = iteration

    @property
    def localdb(self) -> Path:
        """The iteration's payloads, a local database: the first link of the next chain."""
        return self.root / "localdb"

    @property
    def collector_path(self) -> Path:
        return self.root / "collector.pkl"

    @property
    def algorithm(self) -> AlgorithmArea:
        return AlgorithmArea(self.root / "algorithm")

    def result(self) -> IterationResult | None:
        return IterationResult.read(self.root / "result.json")

    def write_result(self, result: IterationResult) -> None:
        result.write(self.root / "result.json")

    def job(self, index: int) -> JobArea:
        return JobArea(self.root / "jobs" / f"{index:04d}", index)

    def jobs(self) -> list[JobArea]:
        """The job folders that exist, in job order."""
        return [self.job(index) for index, _ in _numbered(self.root / "jobs")]

    def remove_jobs_from(self, count: int) -> None:
        """Remove job folders numbered ``count`` and up (left from a plan with more jobs)."""
        _remove_numbered(self.root / "jobs", count)

    def forget_result(self) -> None:
        """Make the iteration pending again, keeping its collector jobs."""
        (self.root / "result.json").unlink(missing_ok=True)
        shutil.rmtree(self.localdb, ignore_errors=True)
        shutil.rmtree(self.algorithm.root, ignore_errors=True)


class CalibrationArea:
    """The folder of one calibration of a run."""

    def __init__(self, output: Path, name: str) -> None:
        self.output = output
        self.name = name
        self.root = output / name

    @property
    def outputdb(self) -> Path:
        """The final payloads: a basf2-style local database."""
        return self.root / "outputdb"

    @property
    def error_log(self) -> Path:
        return self.root / "error.log"

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold this calibration (CalibrationBusy if another process or thread drives it)."""
        with hold(self.root / _LOCK, CalibrationBusy(self.output, self.name)):
            yield

    def is_running(self) -> bool:
        """Whether some process holds this calibration now."""
        return is_held(self.root / _LOCK)

    def record(self) -> CalibrationRecord:
        found = CalibrationRecord.read(self.root / "calibration.json")
        if found is None:
            raise WorkspaceError(self.output, f"has no plan for {self.name}: plan it first")
        return found

    def has_record(self) -> bool:
        return (self.root / "calibration.json").is_file()

    def write_record(self, record: CalibrationRecord) -> None:
        record.write(self.root / "calibration.json")

    def outcome(self) -> CalibrationOutcome | None:
        return CalibrationOutcome.read(self.root / "result.json")

    def write_outcome(self, outcome: CalibrationOutcome) -> None:
        outcome.write(self.root / "result.json")

    def iteration(self, index: int) -> IterationArea:
        return IterationArea(self.root / "iterations" / str(index), index)

    def iterations(self) -> list[IterationArea]:
        """The iteration folders that exist, in order."""
        return [self.iteration(index) for index, _ in _numbered(self.root / "iterations")]

    def final_output_folders(self) -> tuple[Path, Path]:
        """``outputdb/`` and the provenance folder beside it."""
        return self.outputdb, self.root / PROVENANCE_FOLDER

    def remove_iterations_from(self, count: int) -> None:
        """Remove the folders of iterations ``count`` and up."""
        _remove_numbered(self.root / "iterations", count)

    def forget_results(self, keep_iterations: int) -> None:
        """Make the calibration pending again, for ``caf run --rerun``: its outcome, final
        output and iteration results go; collector jobs stay (unchanged ones are reused).
        Iterations from ``keep_iterations`` on are removed entirely."""
        (self.root / "result.json").unlink(missing_ok=True)
        self.error_log.unlink(missing_ok=True)
        for folder in self.final_output_folders():
            shutil.rmtree(folder, ignore_errors=True)
        self.remove_iterations_from(keep_iterations)
        for iteration in self.iterations():
            iteration.forget_result()


class Workspace:
    """The output folder of a calibration run (``caf run --output``, a request's folder)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    @property
    def log_path(self) -> Path:
        return self.root / RUN_LOG

    def exists(self) -> bool:
        return (self.root / RUN_RECORD).is_file()

    def run_record(self) -> RunRecord:
        found = RunRecord.read(self.root / RUN_RECORD) if self.root.is_dir() else None
        if found is None:
            raise WorkspaceError(self.root, "is not the output of a b2cal calibration run")
        return found

    def claim(self, record: RunRecord) -> RunRecord:
        """Make the folder the output of the run ``record`` describes, or check that it is
        (same arguments).

        Returns the recorded run record, whose calibration-run id is kept across resumes.
        Refuses a folder made with other arguments (mixing them would give payloads of no
        defined origin) and a non-empty folder that is not a b2cal output.
        """
        if self.root.exists() and not self.root.is_dir():
            raise WorkspaceError(self.root, "is a file, not a folder")
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / RUN_RECORD
        recorded = RunRecord.read(path)
        if recorded is None:
            foreign = [p for p in self.root.iterdir() if not p.name.startswith(f".{RUN_RECORD}.")]
            if foreign:
                raise WorkspaceError(self.root, "is not empty and was not made by b2cal caf run")
            if record.create(path):
                return record
            recorded = RunRecord.read(path)  # another driver claimed it first: same run?
            assert recorded is not None
        self.check_arguments(recorded, record.arguments)
        return recorded

    def check_arguments(self, recorded: RunRecord, arguments: dict[str, Any]) -> None:
        """ArgumentsChanged, naming each difference, unless ``arguments`` are the recorded."""
        before = recorded.arguments
        keys = sorted(set(before) | set(arguments))
        differences = {
            k: (before.get(k), arguments.get(k)) for k in keys if before.get(k) != arguments.get(k)
        }
        if differences:
            raise ArgumentsChanged(self.root, differences)

    def calibration(self, name: str) -> CalibrationArea:
        return CalibrationArea(self.root, name)

    @contextlib.contextmanager
    def run_log(self) -> Iterator[None]:
        """Append the engine's log lines (logger ``b2cal``) to ``b2cal.log`` while inside."""
        handler = logging.FileHandler(self.log_path, delay=True)  # created at its first line
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s"))
        handler.setLevel(logging.INFO)
        root = logging.getLogger("b2cal")
        previous = root.level
        root.setLevel(logging.INFO)
        root.addHandler(handler)
        try:
            yield
        finally:
            root.removeHandler(handler)
            root.setLevel(previous)
            handler.close()


def host() -> str:
    """This machine's name, recorded with each job."""
    return os.uname().nodename
