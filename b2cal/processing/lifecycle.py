"""A calibration run's lifecycle in the state database: what a (re)started run does, how its
state follows the engine's steps and outcome, what a failure leaves, and whether a sign-off
waits for a person — plain functions over b2cal's records, which the ``calibrate`` flow calls
(it holds no rule of its own) and which are tested without Prefect.

The engine's side — the next step of a calibration and the FAILURE outcome in its workspace —
is :mod:`b2cal.caf.lifecycle`; :func:`failed` records a failure in both, so the workspace and
the state database say the same whoever drove the calibration.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Sequence
from typing import Any

from b2cal.caf.calibration import AlgorithmResult
from b2cal.caf.lifecycle import Step, StepKind, failure_message, record_failure
from b2cal.caf.records import CalibrationOutcome
from b2cal.caf.workspace import CalibrationArea
from b2cal.db.database import SYSTEM, StateDatabase
from b2cal.db.model import CalibrationRun
from b2cal.db.states import ACTIVE, CalRunState, SignoffDecision
from b2cal.errors import Interrupted, StateConflict
from b2cal.processing.placement import WITHOUT_PAYLOADS
from b2cal.sites import SignoffPolicy, Site

S = CalRunState

#: Who approves when the site's policy and a passing validation allow it.
AUTO_APPROVER = f"{SYSTEM} (site policy: auto)"


class Resume(enum.StrEnum):
    """What a calibration run's flow does when it starts (again, after a crash or a retry)."""

    #: Approved, its upload not done: upload.
    UPLOAD = "upload"
    #: Validated, waiting: decide the sign-off again (the site's policy may approve it).
    SIGNOFF = "signoff"
    #: Not ended, or FAILED (a retried run tries it again): compute it.
    COMPUTE = "compute"
    #: Ended otherwise (uploaded, rejected, cancelled, skipped...): nothing.
    NOTHING = "nothing"


def on_start(calrun: CalibrationRun) -> Resume:
    if calrun.state is S.APPROVED:
        return Resume.UPLOAD
    if calrun.state is S.AWAITING_SIGNOFF:
        return Resume.SIGNOFF
    if calrun.state is S.FAILED or calrun.state.active:
        return Resume.COMPUTE
    return Resume.NOTHING


def taken_up(
    db: StateDatabase, calrun_id: int, flow_run_id: str, waiting: Sequence[str] = ()
) -> CalibrationRun:
    """The run is this flow run's (again, after a failure): PLANNED, saying which dependencies
    it waits for (an earlier failure's line goes). Raises StateConflict if it was cancelled or
    skipped meanwhile."""
    return db.move(
        calrun_id,
        S.PLANNED,
        flow_run_id=flow_run_id,
        message=f"waiting for the payloads of {', '.join(waiting)}" if waiting else "",
        expected=ACTIVE | {S.FAILED},
    )


def not_run(db: StateDatabase, calrun: CalibrationRun, dependencies: Sequence[str]) -> bool:
    """A calibration whose dependencies ended without payloads (FAILED, NOT_ENOUGH_DATA,
    CANCELLED) is not computed: FAILED, saying which (``"not run: X ended FAILED"``).
    Returns whether it was."""
    ended = [db.calibration_run_of(calrun.request_id, dep) for dep in dependencies]
    why = [f"{run.calibration} ended {run.state.value}" for run in ended
           if run.state in WITHOUT_PAYLOADS]  # fmt: skip
    if why:
        db.move(calrun.id, S.FAILED, message="not run: " + "; ".join(why))
    return bool(why)


#: The state a calibration run is in while the engine takes each kind of step.
_DURING = {StepKind.COLLECT: S.COLLECTING, StepKind.ALGORITHM: S.ALGORITHM}


def step_started(db: StateDatabase, calrun_id: int, step: Step) -> None:
    """The run's state follows the engine's steps (finishing stays ALGORITHM)."""
    state = _DURING.get(step.kind)
    if state is not None:
        db.move(calrun_id, state, iteration=step.iteration)


#: The state after the engine's outcome: validation follows an OK one.
_AFTER = {
    AlgorithmResult.OK: S.VALIDATING,
    AlgorithmResult.NOT_ENOUGH_DATA: S.NOT_ENOUGH_DATA,
    AlgorithmResult.FAILURE: S.FAILED,
}


def outcome_recorded(
    db: StateDatabase, calrun_id: int, outcome: CalibrationOutcome
) -> CalibrationRun:
    """The engine's outcome in the state database: its result and message, then the state it
    leads to (VALIDATING, NOT_ENOUGH_DATA or FAILED)."""
    db.move(calrun_id, S.ALGORITHM, result=outcome.result.value, message=outcome.message or None)
    return db.move(calrun_id, _AFTER[outcome.result])


def failed(
    db: StateDatabase, calrun_id: int, error: Exception, area: CalibrationArea | None = None
) -> str:
    """The failure policy: a calibration run that cannot go on is FAILED with the error's one
    line — also as a FAILURE outcome in its workspace (``area``, once planned), as ``caf run``
    leaves it — unless it was cancelled or skipped meanwhile (it stays so). An interrupt
    (SIGTERM: its worker stopped, ``server down``) is no failure: the run stays active, back
    at PLANNED and saying so, and its workspace as it is, so that the retry of its flow run
    (b2cal's reconciler makes it) resumes where it stopped. Returns the line."""
    if isinstance(error, Interrupted):
        message, state = failure_message(error), S.PLANNED
    elif area is not None and area.has_record():
        message, state = record_failure(area, error).message or str(error), S.FAILED
    else:
        message, state = failure_message(error), S.FAILED
    with contextlib.suppress(StateConflict):
        db.move(calrun_id, state, message=message, expected=ACTIVE)
    return message


def validated(db: StateDatabase, calrun_id: int, summary: dict[str, Any]) -> CalibrationRun:
    """The validation's summary recorded; the run waits for its sign-off (which may be the
    site's own: :func:`waits_for_a_person`)."""
    problems = "; ".join(summary.get("problems", []))
    message = "validated: waiting for a sign-off"
    if not summary.get("passed"):
        message = "validation failed: " + problems
    return db.move(calrun_id, S.AWAITING_SIGNOFF, summary=summary, message=message)


def cancelled(db: StateDatabase, calrun_id: int, why: str) -> None:
    """Cancelled outside b2cal (its flow run was): CANCELLED, unless it had ended already."""
    with contextlib.suppress(StateConflict):
        db.move(calrun_id, S.CANCELLED, message=why, expected=ACTIVE)


def waits_for_a_person(site: Site, calibration: str, summary: dict[str, Any] | None) -> str | None:
    """The sign-off decision: None if the site approves without a person (its policy for the
    calibration is ``auto`` and the validation passed), else why it waits for one."""
    if not (summary or {}).get("passed"):
        return "validation failed"
    if site.signoff_policy(calibration) is not SignoffPolicy.AUTO:
        return "the site's policy wants an expert"
    return None


def approved_by_the_site(db: StateDatabase, calrun_id: int) -> None:
    """Approved without a person (:func:`waits_for_a_person` said so), unless someone signed
    it off meanwhile."""
    with contextlib.suppress(StateConflict):
        db.signoff(calrun_id, SignoffDecision.APPROVE, AUTO_APPROVER, "validation passed")
