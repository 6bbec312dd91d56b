"""What a request's processing does about its collector jobs beyond the engine: inputs that
broke a collector and cannot be read alone marked bad, batch jobs a stopped collection left
removed. The jobs themselves are kept in one place, the workspace's job folders (``b2cal
jobs`` and the dashboard read them there)."""

from __future__ import annotations

from b2cal.backends.registry import open_backend
from b2cal.caf.jobcontrol import cancel_left
from b2cal.caf.workspace import Workspace
from b2cal.catalog.rootfile import read_whole
from b2cal.db import discovery
from b2cal.db.database import SYSTEM, StateDatabase
from b2cal.errors import BadInputFile
from b2cal.sites import BackendSettings


def mark_failed_inputs(
    db: StateDatabase, site: str, workspace: Workspace, calibration: str, iteration: int
) -> list[str]:
    """After a collection failed for good: each input file that a failed job's collector broke
    on is tried alone (every branch of every event read); one that cannot be read is marked
    bad in the state database with the reason (new requests leave it out). One that reads
    well is not the file's fault (a collector's bug, a missing payload, a wrong setting): it
    is left as it is, and the calibration fails with the collector's reason. Returns the paths
    marked."""
    marked = []
    for job in workspace.calibration(calibration).iteration(iteration).jobs():
        status, spec = job.status(), job.spec()
        if status is None or status.state != "failed" or not status.failed_file or spec is None:
            continue
        tried = [f for f in spec.files if str(f.path) == status.failed_file]
        try:
            for file in tried:
                read_whole(file)
            continue
        except BadInputFile as exc:
            reason = f"{exc.reason} (it broke the {calibration} collector)"
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
