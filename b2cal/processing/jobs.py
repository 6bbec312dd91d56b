"""What a request's processing does about its collector jobs beyond the engine: inputs that
broke a collector marked bad, batch jobs a stopped collection left removed. The jobs
themselves are kept in one place, the workspace's job folders (``b2cal jobs`` and the
dashboard read them there)."""

from __future__ import annotations

from b2cal.backends.registry import open_backend
from b2cal.caf.jobcontrol import cancel_left
from b2cal.caf.workspace import Workspace
from b2cal.db import discovery
from b2cal.db.database import SYSTEM, StateDatabase
from b2cal.sites import BackendSettings


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
