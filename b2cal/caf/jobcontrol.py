"""Collector jobs handled by hand, outside a run (``b2cal jobs resubmit|cancel``).

* :func:`resubmit`: chosen jobs of a collection that stopped (failed jobs, by default) start
  afresh: their status and their attempts are forgotten, so the next run of the calibration
  (``caf run`` again, a rerun or retried flow run) submits them with the full number of
  retries; finished jobs are kept. Their input files replaced in place since (a corrupt copy
  transferred again) are accepted, recorded with their new stamps.
* :func:`cancel_left`: batch jobs that a driver left queued or running when it stopped (a
  batch system keeps them for a restarted driver to pick up) are removed on purpose.

Both refuse while a driver holds the calibration: a running collection is the driver's.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from pathlib import Path

from b2cal.backends.base import Backend, Job, JobHandle
from b2cal.caf.collection import JOB_TARGET
from b2cal.caf.workspace import CalibrationArea, IterationArea, JobArea, Workspace
from b2cal.catalog.inputs import FileStamp
from b2cal.errors import B2CalError

log = logging.getLogger("b2cal.caf")


def _collection(workspace: Workspace, name: str, iteration: int | None) -> IterationArea:
    area = workspace.calibration(name)
    iterations = area.iterations()
    if not iterations:
        raise B2CalError(f"{name} in {workspace.root} has no collector jobs yet")
    return iterations[-1] if iteration is None else area.iteration(iteration)


def resubmit(
    workspace: Workspace,
    name: str,
    numbers: Collection[int] | None = None,
    iteration: int | None = None,
) -> list[int]:
    """Make jobs ``numbers`` (default: the failed ones) of the latest collection (or of
    ``iteration``) start afresh; returns their numbers."""
    area = workspace.calibration(name)
    with area.lock():
        collection = _collection(workspace, name, iteration)
        if collection.result() is not None:
            raise B2CalError(
                f"{name} iteration {collection.iteration} is collected and has its result: "
                f"compute it again with a rerun (caf run --rerun {name}, b2cal request rerun)"
            )
        jobs = {job.index: job for job in collection.jobs()}
        if numbers is None:
            chosen = [n for n, job in jobs.items() if _failed(job)]
        else:
            unknown = sorted(set(numbers) - set(jobs))
            if unknown:
                raise B2CalError(
                    f"{name} iteration {collection.iteration} has no collector job "
                    f"{', '.join(map(str, unknown))} (it has 0-{len(jobs) - 1})"
                )
            chosen = sorted(numbers)
        for number in chosen:
            jobs[number].forget_status()
            jobs[number].forget_submission()
        _restamp(area, [job for n, job in jobs.items() if n in chosen])
        return chosen


def _restamp(area: CalibrationArea, jobs: Sequence[JobArea]) -> list[str]:
    """The files of resubmitted jobs that were replaced in place (a corrupt copy transferred
    again) are recorded with their new stamps: the resumed run accepts them, and their jobs'
    specs change, so they are collected again. Returns their paths."""
    record = area.record()
    paths = {str(f.path) for job in jobs if (spec := job.spec()) is not None for f in spec.files}
    stamps, replaced = [], []
    for stamp in record.stamps:
        now = FileStamp.of(Path(stamp.path)) if stamp.path in paths else stamp
        if now != stamp and now.size >= 0:  # replaced, not gone
            replaced.append(stamp.path)
            log.info("%s: %s replaced: its jobs are collected again", area.name, stamp.path)
        stamps.append(now if now.size >= 0 else stamp)
    if replaced:
        area.write_record(record.model_copy(update={"stamps": stamps}))
    return replaced


def _failed(job: JobArea) -> bool:
    status = job.status()
    return status is not None and status.state == "failed"


def cancel_left(
    workspace: Workspace, name: str, backend: Backend, iteration: int | None = None
) -> list[int]:
    """Cancel on ``backend`` the jobs of the latest collection (or ``iteration``) that were
    submitted to it and have not ended; returns their numbers."""
    area = workspace.calibration(name)
    with area.lock():
        collection = _collection(workspace, name, iteration)
        left = []
        for job in collection.jobs():
            submission = job.submission()
            if submission is None or submission.backend != backend.name or job.status():
                continue
            handle = JobHandle(submission.job_id, Job(name, job.root, JOB_TARGET))
            left.append((job.index, handle))
        if left:
            backend.cancel([handle for _, handle in left])
        return [number for number, _ in left]
