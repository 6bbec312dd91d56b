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

from b2cal.backends.base import Backend, Job, JobHandle, JobReport, JobState
from b2cal.caf.accumulator import RunAccumulators, merge_runs
from b2cal.caf.calibration import Calibration
from b2cal.caf.collection import JOB_TARGET, collector_bytes, collector_digest
from b2cal.caf.progress import plural
from b2cal.caf.records import CalibrationRecord, ChainLink, JobSpec, JobSubmission
from b2cal.caf.workspace import IterationArea, JobArea
from b2cal.catalog.inputs import InputFile
from b2cal.core.files import atomic_write_bytes
from b2cal.errors import B2CalError, CollectionFailed, Interrupted
from b2cal.sites import JobResources

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
    record: CalibrationRecord,
    chain: Sequence[ChainLink],
) -> list[JobSpec]:
    """The specs of one collection's jobs, in job order, as they must be now."""
    digest = collector_digest(calibration.collector, calibration.settings)
    groups = split_files(record.files, calibration.max_files_per_job, calibration.max_jobs)
    stamps = {stamp.path: stamp for stamp in record.stamps}
    return [
        JobSpec(
            calibration=calibration.name,
            iteration=area.iteration,
            collector=area.collector_path,
            collector_digest=digest,
            chain=list(chain),
            files=list(group),
            stamps=[stamps[str(f.path)] for f in group if str(f.path) in stamps],
        )
        for group in groups
    ]


def prepare_jobs(
    area: IterationArea,
    calibration: Calibration,
    record: CalibrationRecord,
    chain: Sequence[ChainLink],
) -> list[JobArea]:
    """Write the job specs of one collection (keeping jobs whose spec is unchanged)."""
    atomic_write_bytes(
        area.collector_path, collector_bytes(calibration.collector, calibration.settings)
    )
    specs = job_specs(area, calibration, record, chain)
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
    resources: JobResources | None = None,
) -> None:
    """Run every job that has not finished on ``backend``, each asking for ``resources``.

    A failed job is tried again, up to the backend's retries, counting its attempts in its
    folder (across restarts). Jobs that a backend whose jobs outlive their driver still holds
    (their batch ids are recorded in their folders) are picked up, not submitted again; the
    rest are submitted in as many submissions as the backend's job limit allows at a time.
    Raises CollectionFailed naming the first job that still fails, Interrupted when ``stop``
    is set (jobs of such a backend are left queued: a rerun picks them up).
    """
    total = len(jobs)
    where = f"{calibration}: iteration {iteration}"
    asked = resources or JobResources()
    todo = [job for job in jobs if not job.done]
    backend.check_folders([_job(calibration, iteration, job, asked) for job in todo])
    attempts = {job.index: _attempts(job) for job in todo}
    live = _reattached(calibration, iteration, todo, backend, asked)
    waiting = [job for job in todo if job.index not in {j.index for j, _ in live.values()}]
    held = len(live)  # slots these jobs occupy
    failed: list[tuple[JobArea, str]] = []
    max_attempts = backend.retries + 1
    done_before = total - len(todo)
    finished = 0
    report(done_before, total)
    try:
        while waiting or live:
            if stop is not None and stop.is_set():
                _stop(backend, live, where)
            # under a job limit, top up in submissions of a quarter of it at least (never one
            # submission per job), or whatever is free when nothing of ours is queued
            least = 1 if not live else max(1, (backend.slots.limit or 1) // 4)
            granted = backend.slots.take(len(waiting), least) if waiting else 0
            held += granted
            if granted:
                chosen, waiting = waiting[:granted], waiting[granted:]
                for job in chosen:
                    job.forget_status()
                    attempts[job.index] += 1
                handles = backend.submit(
                    [_job(calibration, iteration, job, asked) for job in chosen]
                )
                for job, handle in zip(chosen, handles, strict=True):
                    attempt = attempts[job.index]
                    job.write_submission(
                        JobSubmission(backend=backend.name, job_id=handle.job_id, attempt=attempt)
                    )
                    live[handle.job_id] = (job, handle)
                count = plural(len(chosen), "collector job")
                log.info("%s: %s submitted to %s", where, count, backend.name)
            if not live:
                backend.slots.wait(backend.poll_seconds)  # the limit: other callers hold it
                continue
            reports = backend.poll([handle for _, handle in live.values()])
            ended = [job_id for job_id, r in reports.items() if r.state.finished]
            for job_id in ended:
                job, _ = live.pop(job_id)
                backend.slots.give(1)
                held -= 1
                if reports[job_id].state is JobState.DONE and job.done:
                    finished += 1
                    continue
                if stop is not None and stop.is_set():
                    continue  # killed by the interrupt: not a failure
                reason = _reason(job, reports[job_id])
                attempt = attempts[job.index]
                log.warning(
                    "%s: collector job %d failed (attempt %d of %d): %s",
                    *(where, job.index, attempt, max_attempts, reason),
                )
                if attempts[job.index] < max_attempts:
                    waiting.append(job)
                else:
                    failed.append((job, reason))
            report(done_before + finished, total)
            if live and not ended:
                backend.wait([handle for _, handle in live.values()], backend.poll_seconds)
    finally:
        backend.slots.give(held)
    if stop is not None and stop.is_set():
        raise Interrupted(f"{where}: collector jobs stopped")
    if failed:
        job, reason = min(failed, key=lambda f: f[0].index)  # the same one, whatever the timing
        raise CollectionFailed(
            calibration, job.index, attempts[job.index], len(failed), total, reason, job.log_path
        )
    log.info("%s: %s done", where, plural(total, "collector job"))


def _job(calibration: str, iteration: int, job: JobArea, resources: JobResources) -> Job:
    return Job(f"{calibration}.i{iteration}.j{job.index:04d}", job.root, JOB_TARGET, resources)


def _attempts(job: JobArea) -> int:
    """Attempts made so far (a restarted driver goes on counting)."""
    submission = job.submission()
    return submission.attempt if submission is not None else 0


def _reattached(
    calibration: str,
    iteration: int,
    jobs: Sequence[JobArea],
    backend: Backend,
    resources: JobResources,
) -> dict[str, tuple[JobArea, JobHandle]]:
    """The jobs a backend whose jobs outlive their driver still holds, by their recorded ids:
    picked up instead of submitted again (a job that ended meanwhile reports how)."""
    if not backend.reattach:
        return {}
    recorded = []
    for job in jobs:
        submission = job.submission()
        if submission is not None and submission.backend == backend.name and job.status() is None:
            recorded.append((job, submission.job_id))
    if not recorded:
        return {}
    by_id = {job_id: job for job, job_id in recorded}
    handles = backend.attach(
        [(_job(calibration, iteration, job, resources), job_id) for job, job_id in recorded]
    )
    backend.slots.hold(len(handles))  # queued or running already: they count, limit or not
    found = {handle.job_id: (by_id[handle.job_id], handle) for handle in handles}
    if found:
        count = plural(len(found), "collector job")
        what = f"{calibration}: iteration {iteration}: {count} re-attached on {backend.name}"
        log.info("%s (not submitted again)", what)
    return found


def _stop(backend: Backend, live: dict[str, tuple[JobArea, JobHandle]], where: str) -> None:
    """An interrupt: jobs that die with their driver are cancelled now; batch jobs stay
    queued for the rerun to pick up (``b2cal jobs cancel`` removes them on purpose)."""
    if live and not backend.reattach:
        backend.cancel([handle for _, handle in live.values()])
    raise Interrupted(f"{where}: collector jobs stopped")


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
