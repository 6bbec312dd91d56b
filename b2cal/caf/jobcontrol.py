"""Collector jobs handled by hand, outside a run (``b2cal jobs resubmit|cancel``).

* :func:`resubmit`: chosen jobs of a collection that stopped (failed jobs, by default) start
  afresh: their status and their attempts are forgotten, so the next run of the calibration
  (``caf run`` again, a rerun or retried flow run) submits them with the full number of
  retries; finished jobs are kept.
* :func:`cancel_left`: batch jobs that a driver left queued or running when it stopped (a
  batch system keeps them for a restarted driver to pick up) are removed on purpose.

Both refuse while a driver holds the calibration: a running collection is the driver's.
"""

from __future__ import annotations

from collections.abc import Collection

from b2cal.backends.base import Backend, Job, JobHandle
from b2cal.caf.collection import JOB_TARGET
from b2cal.caf.workspace import IterationArea, JobArea, Workspace
from b2cal.errors import B2CalError


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
        return chosen


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
