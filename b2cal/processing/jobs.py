"""Collector jobs as the state database keeps them: read from the engine's job folders after
each collection, so views (``b2cal`` now, the dashboard later) need not read job folders."""

from __future__ import annotations

from collections.abc import Collection

from b2cal.backends.registry import open_backend
from b2cal.caf.jobcontrol import cancel_left
from b2cal.caf.status import job_rows
from b2cal.caf.workspace import Workspace
from b2cal.db import discovery
from b2cal.db.database import SYSTEM, StateDatabase
from b2cal.db.model import CollectorJob
from b2cal.sites import BackendSettings


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


def mark_failed_inputs(
    db: StateDatabase, site: str, workspace: Workspace, calibration: str, iteration: int
) -> list[str]:
    """After a collection failed for good: each input file that a failed job's collector broke
    on is marked bad in the state database (new requests leave it out); returns their paths."""
    marked = []
    for job in workspace.calibration(calibration).iteration(iteration).jobs():
        status = job.status()
        if status is None or status.state != "failed" or not status.failed_file:
            continue
        reason = f"broke the {calibration} collector: {status.error}"
        if discovery.mark_bad(db, site, status.failed_file, reason, SYSTEM):
            marked.append(status.failed_file)
    return marked


def cancel_left_jobs(
    settings: BackendSettings,
    workspace: Workspace,
    calibration: str,
    iteration: int | None = None,
) -> list[int] | None:
    """The batch jobs a calibration's collection left queued or running on the backend of
    ``settings``, removed (a cancelled request's, or on purpose: a backend whose jobs outlive
    their driver keeps them for a restart); returns their numbers, None for a backend whose
    jobs die with their driver (nothing can be left)."""
    area = workspace.calibration(calibration)
    if not area.has_record() or not area.iterations():
        return []
    with open_backend(settings) as backend:
        if not backend.reattach:
            return None
        return cancel_left(workspace, calibration, backend, iteration)
