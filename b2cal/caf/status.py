"""Where each calibration of a workspace stands (``b2cal caf status``, like ``b2caf-status``).

Read from the records alone, so it works while a run is going (from another terminal, or the
dashboard later) and after it ended: per calibration its state, iteration, collector jobs done
/ failed / running, and the last error. Whether a process is driving a calibration right now is
told by its lock.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from b2cal.caf.records import CalibrationOutcome
from b2cal.caf.workspace import CalibrationArea, IterationArea, Workspace


class CalibrationStatus(BaseModel):
    calibration: str
    #: not started, not run (a dependency did not end OK), collecting, running the algorithm,
    #: finishing, or the final result (OK, NOT_ENOUGH_DATA, FAILURE).
    state: str
    #: Whether a process holds the calibration now; a state that is not final without one
    #: means the run was stopped (rerun to resume).
    active: bool
    iteration: int | None = None
    jobs: int = 0
    done: int = 0
    failed: int = 0
    running: int = 0
    last_error: str = ""


def workspace_status(workspace: Workspace) -> list[CalibrationStatus]:
    """The status of every calibration of the workspace, in dependency order."""
    record = workspace.run_record()
    rows = [calibration_status(workspace.calibration(name)) for name in record.calibrations]
    for row in rows:
        if row.state == "not started":
            _blocked(workspace, row)
    return rows


def _blocked(workspace: Workspace, row: CalibrationStatus) -> None:
    """A calibration not started because a dependency ended otherwise than OK."""
    area = workspace.calibration(row.calibration)
    if not area.has_record():
        return
    record = area.record()
    for dep in record.upstream:
        if dep in record.elsewhere:
            continue  # not this workspace's to compute
        outcome = workspace.calibration(dep).outcome()
        if outcome is not None and outcome.result.value != "OK":
            row.state = "not run"
            row.last_error = f"dependency {dep} ended {outcome.result.value}"
            return


def calibration_status(area: CalibrationArea) -> CalibrationStatus:
    active = area.is_running()
    outcome = area.outcome()
    iterations = area.iterations()
    current = iterations[-1] if iterations else None
    status = CalibrationStatus(calibration=area.name, state="not started", active=active)
    if current is not None:
        _count_jobs(status, current, active)
        status.iteration = current.iteration
        result = current.result()
        if result is None:
            jobs_done = status.jobs > 0 and status.done == status.jobs
            status.state = "running the algorithm" if jobs_done else "collecting"
        else:
            status.state = "collecting" if result.result.value == "ITERATE" else "finishing"
    if outcome is not None and (outcome.finished or not active):
        _final(status, outcome)
    elif outcome is not None and not status.last_error:
        status.last_error = outcome.message  # a failure that is being retried now
    return status


def _count_jobs(status: CalibrationStatus, iteration: IterationArea, active: bool) -> None:
    for job in iteration.jobs():
        status.jobs += 1
        job_status = job.status()
        if job_status is None:
            if active and job.submission() is not None:
                status.running += 1
        elif job_status.state == "done":
            status.done += 1
        else:
            status.failed += 1
            status.last_error = f"job {job.index}: {job_status.error}"


def _final(status: CalibrationStatus, outcome: CalibrationOutcome) -> None:
    status.state = outcome.result.value
    status.iteration = outcome.iterations - 1 if outcome.iterations else status.iteration
    if outcome.result.value != "OK":
        status.last_error = outcome.message


class JobRow(BaseModel):
    """One collector job as its folder tells it (``b2cal jobs``, the state database)."""

    iteration: int
    number: int
    #: planned (never submitted), submitted (queued or running, or stopped with its driver),
    #: done, failed.
    state: str
    files: int
    runs: list[int]
    attempts: int
    backend: str | None
    batch_id: str | None
    submitted: datetime | None
    seconds: float | None
    host: str | None
    error: str | None
    folder: str


def job_rows(area: CalibrationArea, iteration: int | None = None) -> list[JobRow]:
    """The collector jobs of one iteration of a calibration (default: its latest)."""
    iterations = area.iterations()
    if iteration is None:
        if not iterations:
            return []
        chosen = iterations[-1]
    else:
        chosen = area.iteration(iteration)
    rows = []
    for job in chosen.jobs():
        spec, status, submission = job.spec(), job.status(), job.submission()
        state: str
        if status is not None:
            state = status.state
        else:
            state = "submitted" if submission is not None else "planned"
        rows.append(
            JobRow(
                iteration=chosen.iteration,
                number=job.index,
                state=state,
                files=len(spec.files) if spec is not None else 0,
                runs=sorted({f.run for f in spec.files}) if spec is not None else [],
                attempts=submission.attempt if submission is not None else 0,
                backend=submission.backend if submission is not None else None,
                batch_id=submission.job_id if submission is not None else None,
                submitted=submission.submitted if submission is not None else None,
                seconds=status.seconds if status is not None else None,
                host=(status.host or None) if status is not None else None,
                error=(status.error or None) if status is not None else None,
                folder=str(job.root),
            )
        )
    return rows
