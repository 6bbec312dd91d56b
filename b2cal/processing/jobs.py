"""Collector jobs as the state database keeps them: read from the engine's job folders after
each collection, so views (``b2cal`` now, the dashboard later) need not read job folders."""

from __future__ import annotations

from collections.abc import Collection

from b2cal.caf.workspace import Workspace
from b2cal.db.model import CollectorJob


def job_records(
    workspace: Workspace,
    calibration: str,
    calrun_id: int,
    iteration: int,
    numbers: Collection[int] | None = None,
) -> list[CollectorJob]:
    """The collector jobs of one iteration (those of ``numbers``: a batch): state, files,
    attempts, seconds, host, batch id."""
    jobs = []
    for job in workspace.calibration(calibration).iteration(iteration).jobs():
        if numbers is not None and job.index not in numbers:
            continue
        spec, status, submission = job.spec(), job.status(), job.submission()
        state: str
        if status is not None:
            state = status.state
        elif submission is not None:
            state = "submitted"
        else:
            state = "planned"
        jobs.append(
            CollectorJob(
                calibration_run_id=calrun_id,
                iteration=iteration,
                number=job.index,
                state=state,
                files=len(spec.files) if spec is not None else 0,
                attempts=submission.attempt if submission is not None else 0,
                seconds=status.seconds if status is not None else None,
                host=(status.host or None) if status is not None else None,
                batch_id=submission.job_id if submission is not None else None,
                reason=(status.error or None) if status is not None else None,
            )
        )
    return jobs
