"""What a calibration run's workspace shows a viewer: its iterations with the algorithm's
result per IoV, and its collector jobs with the log tail of failed ones — read from the
request's workspace at the site that computes the calibration, so that views (the dashboard)
read b2cal's rows, never the engine's files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from b2cal.caf.status import job_rows
from b2cal.caf.workspace import Workspace
from b2cal.db.model import CalibrationRun, Request
from b2cal.errors import B2CalError
from b2cal.sites import load_site


@dataclass(frozen=True)
class IterationRow:
    """One execution of an iteration's algorithm (one IoV), or an iteration still running."""

    iteration: int
    result: str
    iov: str = ""
    algorithm: str = ""
    message: str = ""


@dataclass(frozen=True)
class JobRow:
    iteration: int
    number: int
    state: str
    attempts: int
    files: int
    seconds: float | None
    host: str
    error: str
    #: The last lines of a failed job's log.
    log_tail: str = ""


def calibration_workspace(request: Request, calrun: CalibrationRun) -> Workspace | None:
    """The workspace the calibration run is computed in, if this machine sees it (a site's
    shared filesystem); None otherwise."""
    try:
        where = load_site(request.site_of(calrun.calibration))
    except B2CalError:
        return None
    folder = where.request_folder(request.id) / "output"
    return Workspace(folder) if folder.is_dir() else None


def iteration_rows(request: Request, calrun: CalibrationRun) -> list[IterationRow] | None:
    """The iterations so far (None: the workspace is not visible from here)."""
    workspace = calibration_workspace(request, calrun)
    if workspace is None:
        return None
    rows = []
    for area in workspace.calibration(calrun.calibration).iterations():
        result = area.result()
        if result is None:
            rows.append(IterationRow(area.iteration, "running"))
            continue
        for execution in result.executions or [{}]:
            rows.append(
                IterationRow(
                    area.iteration,
                    result.result.value,
                    str(execution.get("iov", "")),
                    str(execution.get("result", "")),
                    str(execution.get("message", result.message) or ""),
                )
            )
    return rows


def collector_job_rows(
    request: Request, calrun: CalibrationRun, log_lines: int = 20
) -> list[JobRow] | None:
    """The collector jobs of every iteration (None: the workspace is not visible from here)."""
    workspace = calibration_workspace(request, calrun)
    if workspace is None:
        return None
    rows = []
    for job in job_rows(workspace.calibration(calrun.calibration)):
        tail = ""
        if job.state == "failed":
            log = Path(job.folder) / "job.log"
            if log.is_file():
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-log_lines:])
        rows.append(
            JobRow(
                job.iteration, job.number, job.state, job.attempts, job.files, job.seconds,
                job.host or "", job.error or "", tail,
            )
        )  # fmt: skip
    return rows
