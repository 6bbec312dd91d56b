"""Collector jobs as the state database keeps them: read from the engine's job folders after
each collection, so views (``b2cal`` now, the dashboard later) need not read job folders."""

from __future__ import annotations

from collections.abc import Collection

from b2cal.caf.status import job_rows
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
    return [
        CollectorJob(
            calibration_run_id=calrun_id,
            iteration=iteration,
            number=row.number,
            state=row.state,
            files=row.files,
            attempts=row.attempts,
            seconds=row.seconds,
            host=row.host,
            batch_id=row.batch_id,
            reason=row.error,
        )
        for row in job_rows(workspace.calibration(calibration), iteration)
        if numbers is None or row.number in numbers
    ]
