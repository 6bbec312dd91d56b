"""One iteration of a calibration: collect on a backend, merge, run the strategy, keep the result.

An iteration lives in ``<calibration dir>/iterations/<i>/``: the collector jobs, the payloads it
produced as a local database (``localdb/``, the first link of the next iteration's chain) and
``result.json``, written last. An iteration with ``result.json`` is done and is never
recomputed; one without it is redone, reusing every collector job that had finished.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from b2cal.backends.base import Backend, JobHandle, JobState
from b2cal.caf.atomic_file import atomic_write_json
from b2cal.caf.calibration import AlgorithmResult, Calibration, PayloadDoc
from b2cal.caf.chain import PayloadChain
from b2cal.caf.collection import BadFile, CollectorJob, merge_job_outputs, plan_collection
from b2cal.caf.iov import IoV
from b2cal.caf.localdb import LocalDatabase, write_local_database
from b2cal.caf.strategies import RunRange, run_strategy
from b2cal.catalog.storage import InputFile
from b2cal.errors import B2CalError

RESULT = "result.json"
LOCALDB = "localdb"


class Progress(Protocol):
    """Where the engine reports what it is doing (a rich display, a Prefect log, nothing)."""

    def stage(self, calibration: str, text: str) -> None: ...

    def jobs(self, calibration: str, done: int, total: int) -> None: ...


class NoProgress:
    def stage(self, calibration: str, text: str) -> None:
        pass

    def jobs(self, calibration: str, done: int, total: int) -> None:
        pass


class CollectionFailed(B2CalError):
    """Collector jobs failed even after their retries."""


@dataclass
class IterationResult:
    """What one iteration produced (``iterations/<i>/result.json``)."""

    iteration: int
    result: AlgorithmResult
    message: str = ""
    payloads: list[tuple[str, IoV]] = field(default_factory=list)
    executions: list[dict[str, Any]] = field(default_factory=list)
    events: int = 0
    jobs: int = 0
    bad_files: list[BadFile] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            "result": self.result.value,
            "message": self.message,
            "payloads": [{"name": n, "iov": str(i)} for n, i in self.payloads],
            "executions": self.executions,
            "events": self.events,
            "jobs": self.jobs,
            "bad_files": [{"path": b.path, "reason": b.reason} for b in self.bad_files],
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> IterationResult:
        return cls(
            iteration=doc["iteration"],
            result=AlgorithmResult(doc["result"]),
            message=doc["message"],
            payloads=[(p["name"], IoV.parse(p["iov"])) for p in doc["payloads"]],
            executions=doc["executions"],
            events=doc["events"],
            jobs=doc["jobs"],
            bad_files=[BadFile(**b) for b in doc["bad_files"]],
        )


def run_iteration(
    calibration: Calibration,
    iteration: int,
    directory: Path,
    *,
    files: Sequence[InputFile],
    chain: Sequence[Path],
    requested: RunRange,
    open_ended: bool,
    backend: Backend,
    progress: Progress,
    stop: threading.Event | None = None,
) -> IterationResult:
    """Run (or reload) iteration ``iteration`` of ``calibration`` in ``directory``."""
    done = directory / RESULT
    if done.exists():
        return IterationResult.from_json(json.loads(done.read_text()))
    name = calibration.name
    jobs = plan_collection(
        directory,
        calibration=name,
        iteration=iteration,
        collector=calibration.collector,
        files=files,
        chain=chain,
        max_files_per_job=calibration.max_files_per_job,
        max_jobs=calibration.max_jobs,
    )
    progress.stage(name, f"iteration {iteration}: collecting ({len(jobs)} jobs)")
    collect(jobs, backend, lambda d, t: progress.jobs(name, d, t), stop=stop)
    statuses = [job.status() for job in jobs]
    bad = [b for s in statuses if s is not None for b in s.bad_files]
    progress.stage(name, f"iteration {iteration}: merging and running the algorithm")
    per_run = merge_job_outputs(jobs)
    lookup_chain = PayloadChain(chain)
    outcome = run_strategy(
        calibration.strategy,
        calibration.algorithm,
        per_run,
        requested,
        iteration=iteration,
        lookup=lookup_chain.lookup,
        open_ended=open_ended,
    )
    if outcome.payloads:
        write_local_database(directory / LOCALDB, outcome.payloads)
    result = IterationResult(
        iteration=iteration,
        result=outcome.result,
        message=outcome.message,
        payloads=[(n, iov) for n, iov, _ in outcome.payloads],
        executions=[record.summary() for record in outcome.records],
        events=sum(s.events for s in statuses if s is not None),
        jobs=len(jobs),
        bad_files=bad,
    )
    atomic_write_json(done, result.to_json())
    return result


def iteration_payloads(directory: Path) -> list[tuple[str, IoV, PayloadDoc]]:
    """The payloads an iteration wrote, read back from its local database."""
    database = LocalDatabase(directory / LOCALDB)
    return [(e.name, e.iov, e.read()) for e in database.entries]


def collect(
    jobs: Sequence[CollectorJob],
    backend: Backend,
    report: Callable[[int, int], None],
    *,
    retries: int = 1,
    poll_seconds: float = 0.5,
    stop: threading.Event | None = None,
) -> None:
    """Run every job that has not finished yet on ``backend``, retrying failed ones.

    ``report(done, total)`` is called as jobs finish. Raises CollectionFailed naming the first
    job that still fails after ``retries`` more attempts, with its reason and log.
    """
    total = len(jobs)
    todo = [job for job in jobs if not job.done]
    report(total - len(todo), total)
    for attempt in range(retries + 1):
        if not todo:
            return
        handles = backend.submit([job.directory for job in todo])
        states: dict[str, JobState] = {}
        while True:
            states = backend.poll(handles)
            finished = sum(1 for s in states.values() if s is JobState.DONE)
            report(total - len(todo) + finished, total)
            if all(s.finished for s in states.values()):
                break
            if stop is not None and stop.is_set():
                backend.cancel(handles)
                raise CollectionFailed("interrupted: collector jobs cancelled")
            backend.wait(handles, poll_seconds)
        failed = [(job, h) for job, h in zip(todo, handles, strict=True) if not _ok(states, h)]
        if failed and attempt == retries:
            job, handle = failed[0]
            reason = backend.error(handle) or states[handle.job_id].value.lower()
            raise CollectionFailed(
                f"collector job {job.index} failed after {retries + 1} attempts "
                f"({len(failed)} of {total} jobs failed): {reason}; log: {job.directory}/job.log"
            )
        todo = [job for job, _ in failed]


def _ok(states: dict[str, JobState], handle: JobHandle) -> bool:
    return states[handle.job_id] is JobState.DONE
