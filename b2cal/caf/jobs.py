"""Collector jobs from the driver's side: split the files, write the specs, run them on a
backend (retrying failed ones), merge their outputs.

The split depends only on the file list and the calibration's ``max_files_per_job`` and
``max_jobs``, never on the number of workers or the backend, and outputs are merged in job
order: the same inputs always give bit-identical accumulators, hence payloads.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence

from b2cal.backends.base import Backend, Job, JobReport, JobState
from b2cal.caf.accumulator import RunAccumulators, merge_runs
from b2cal.caf.calibration import Calibration
from b2cal.caf.collection import JOB_TARGET, collector_bytes, collector_digest
from b2cal.caf.progress import plural
from b2cal.caf.records import ChainLink, JobSpec, JobSubmission
from b2cal.caf.workspace import IterationArea, JobArea
from b2cal.catalog.inputs import InputFile
from b2cal.core.files import atomic_write_bytes
from b2cal.errors import B2CalError, CollectionFailed, Interrupted

log = logging.getLogger("b2cal.caf")

#: ``report(done, total)``: how many of an iteration's jobs have finished.
JobReporter = Callable[[int, int], None]


def split_files(
    files: Sequence[InputFile], max_files_per_job: int, max_jobs: int | None = None
) -> list[tuple[InputFile, ...]]:
    """Split sorted input files into consecutive jobs of at most ``max_files_per_job`` files.

    With ``max_jobs``, jobs get more files each so that there are no more than that many.
    """
    ordered = sorted(files)
    per_job = max(1, max_files_per_job)
    if max_jobs is not None and ordered:
        per_job = max(per_job, math.ceil(len(ordered) / max_jobs))
    return [tuple(ordered[i : i + per_job]) for i in range(0, len(ordered), per_job)]


def job_specs(
    area: IterationArea,
    calibration: Calibration,
    files: Sequence[InputFile],
    chain: Sequence[ChainLink],
) -> list[JobSpec]:
    """The specs of one collection's jobs, in job order, as they must be now."""
    digest = collector_digest(calibration.collector, calibration.settings)
    groups = split_files(files, calibration.max_files_per_job, calibration.max_jobs)
    return [
        JobSpec(
            calibration=calibration.name,
            iteration=area.iteration,
            collector=area.collector_path,
            collector_digest=digest,
            chain=list(chain),
            files=list(group),
        )
        for group in groups
    ]


def prepare_jobs(
    area: IterationArea,
    calibration: Calibration,
    files: Sequence[InputFile],
    chain: Sequence[ChainLink],
) -> list[JobArea]:
    """Write the job specs of one collection (keeping jobs whose spec is unchanged)."""
    atomic_write_bytes(
        area.collector_path, collector_bytes(calibration.collector, calibration.settings)
    )
    specs = job_specs(area, calibration, files, chain)
    jobs = []
    for index, spec in enumerate(specs):
        job = area.job(index)
        job.write_spec(spec)
        jobs.append(job)
    area.remove_jobs_from(len(specs))
    return jobs


def collected_jobs(area: IterationArea, specs: Sequence[JobSpec]) -> list[JobArea]:
    """The iteration's jobs if every one is done with exactly ``specs`` (the collection as it
    must be now); else B2CalError: outputs of another plan, another collector or another
    chain must never be merged."""
    jobs = area.jobs()
    stale = [job.index for job, spec in zip(jobs, specs, strict=False) if job.spec() != spec]
    unfinished = [job.index for job in jobs if not job.done]
    if len(jobs) != len(specs) or stale or unfinished:
        detail = (
            f"jobs {stale} were planned otherwise"
            if stale
            else f"{len(jobs) - len(unfinished)} of {len(specs)} planned jobs are done"
        )
        raise B2CalError(
            f"{specs[0].calibration if specs else area.root} iteration {area.iteration} is not "
            f"collected as planned now ({detail}): collect first"
        )
    return jobs


def run_jobs(
    calibration: str,
    iteration: int,
    jobs: Sequence[JobArea],
    backend: Backend,
    report: JobReporter,
    stop: threading.Event | None = None,
) -> None:
    """Run every job that has not finished on ``backend``; a failed job gets the backend's
    number of retries. Raises CollectionFailed naming the first job that still fails."""
    total = len(jobs)
    todo = [job for job in jobs if not job.done]
    report(total - len(todo), total)
    attempts = backend.retries + 1
    where = f"{calibration}: iteration {iteration}"
    for attempt in range(1, attempts + 1):
        if not todo:
            return
        if stop is not None and stop.is_set():
            raise Interrupted(f"{where} before collector jobs were submitted")
        for job in todo:
            job.forget_status()
        handles = backend.submit(
            [
                Job(f"{calibration}.i{iteration}.j{job.index:04d}", job.root, JOB_TARGET)
                for job in todo
            ]
        )
        for job, handle in zip(todo, handles, strict=True):
            job.write_submission(
                JobSubmission(backend=backend.name, job_id=handle.job_id, attempt=attempt)
            )
        log.info(
            "%s: %s submitted to %s (attempt %d)",
            where,
            plural(len(todo), "collector job"),
            backend.name,
            attempt,
        )
        reports: dict[str, JobReport] = {}
        while True:
            reports = backend.poll(handles)
            finished = sum(1 for r in reports.values() if r.state is JobState.DONE)
            report(total - len(todo) + finished, total)
            if all(r.state.finished for r in reports.values()):
                break
            if stop is not None and stop.is_set():
                backend.cancel(handles)
                raise Interrupted(f"{where}: collector jobs cancelled")
            backend.wait(handles, backend.poll_seconds)
        if stop is not None and stop.is_set():  # jobs killed by the interrupt did not fail
            raise Interrupted(f"{where}: collector jobs stopped")
        failed = []
        for job, handle in zip(todo, handles, strict=True):
            if reports[handle.job_id].state is JobState.DONE and job.done:
                continue
            reason = _reason(job, reports[handle.job_id])
            log.warning(
                "%s: collector job %d failed (attempt %d): %s", where, job.index, attempt, reason
            )
            failed.append((job, reason))
        if failed and attempt == attempts:
            job, reason = failed[0]
            raise CollectionFailed(
                calibration, job.index, attempts, len(failed), total, reason, job.log_path
            )
        todo = [job for job, _ in failed]
        if not todo:
            log.info("%s: %s done", where, plural(total, "collector job"))


def _reason(job: JobArea, report: JobReport) -> str:
    """Why a job failed: the error it recorded itself, else what the backend knows."""
    status = job.status()
    if status is not None and status.state == "failed" and status.error:
        return status.error
    return report.reason or report.state.value.lower()


def merge_job_outputs(jobs: Sequence[JobArea]) -> RunAccumulators:
    """Merge the per-run outputs of finished jobs in job order (fixed, hence reproducible)."""
    missing = [job.index for job in jobs if not job.done]
    if missing:
        raise B2CalError(f"collector jobs {missing} have not finished: collect first")
    return merge_runs(job.output() for job in sorted(jobs, key=lambda j: j.index))
