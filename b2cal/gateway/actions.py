"""What an authenticated person may ask of b2cal, each action checked against the policy of
roles before anything changes, and every refusal written to the action log.

The HTTPS API and the dashboard act through these functions and nothing else, so nobody acts
on a calibration without passing through the policy. The command line on a site's own
machine acts as its local account (the site trusts its operators) and calls the layer below,
:mod:`b2cal.requests.operations`.

Races are decided by the state database: of two people signing off (or retrying, skipping,
cancelling) the same item at once, one wins and the other is told who did what
(:class:`~b2cal.errors.StateConflict`). A page that shows an old attempt of a calibration run
names that attempt; acting on it once a rerun has started a new one is refused.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from b2cal.auth.identity import Identity
from b2cal.auth.policy import Action, Grant, check, role_map
from b2cal.cdb.operations import promote as promote_tag
from b2cal.cdb.rules import IoVChange
from b2cal.cdb.store import ConditionsStore
from b2cal.core.iov import ExpRun
from b2cal.db.database import StateDatabase
from b2cal.db.model import CalibrationRun, Request, Signoff
from b2cal.db.states import CalRunState, SignoffDecision, check_attempt
from b2cal.errors import B2CalError, NotAllowed, StateConflict
from b2cal.processing.users import grants_for, standing
from b2cal.requests import operations
from b2cal.settings import Settings
from b2cal.sites import Site, load_site


@dataclass(frozen=True)
class Person:
    """Someone acting: who they proved to be, and what the site lets them do."""

    identity: Identity
    grants: tuple[Grant, ...]
    #: Where the registry has them (:func:`b2cal.processing.users.standing`).
    standing: str = ""

    @property
    def dn(self) -> str:
        return self.identity.dn

    def doc(self) -> dict[str, object]:
        return {
            "dn": self.dn,
            "via": self.identity.via,
            "fqans": list(self.identity.fqans),
            "grants": [g.describe() for g in self.grants],
            "registry": self.standing,
        }

    def roles(self) -> str:
        """The grants in words, or why there are none."""
        described = ", ".join(g.describe() for g in self.grants)
        return described or (f"no role: {self.standing}" if self.standing else "no role")


def person(db: StateDatabase, identity: Identity, settings: Settings | None = None) -> Person:
    """The grants the registry and the identity's VOMS attributes give it."""
    chosen = settings or Settings()
    mapping = role_map(chosen.role_map, chosen.vo)
    grants = tuple(grants_for(db, identity, mapping))
    return Person(identity, grants, standing(db, identity.dn))


def permit(
    db: StateDatabase,
    who: Person,
    action: Action,
    target: str,
    calibrations: Iterable[str | None] = (None,),
) -> None:
    """NotAllowed (and a ``refused`` line in the action log) unless ``who`` may do ``action``
    on ``target`` for every one of ``calibrations``."""
    try:
        for calibration in calibrations:
            check(who.identity, who.grants, action, target, calibration)
    except NotAllowed as exc:
        if not who.grants and not who.identity.limited:  # say why there is no role
            exc = NotAllowed(f"{who.dn} ({who.roles()})", exc.action, exc.target, exc.needs)
        db.log_action(who.dn, action.value, target, "refused", {"why": str(exc)})
        raise exc from None


def _current(db: StateDatabase, calrun_id: int, attempt: int | None, wanted: str) -> CalibrationRun:
    """The calibration run, refused if the caller saw another attempt of it (a stale page)."""
    calrun = db.calibration_run(calrun_id)
    check_attempt(calrun.label, calrun.state.value, wanted, calrun.attempt, attempt)
    return calrun


def _refused(db: StateDatabase, who: Person, action: str, target: str, exc: B2CalError) -> None:
    db.log_action(who.dn, action, target, "refused", {"why": str(exc)})


def sign_off(
    db: StateDatabase,
    who: Person,
    calrun_id: int,
    decision: SignoffDecision,
    comment: str,
    *,
    attempt: int | None = None,
    upload: str = "flow",
) -> tuple[Signoff, str]:
    """Approve or reject a waiting calibration run (the state database lets one of two
    simultaneous decisions through); then its upload starts at the computing site."""
    target = f"calibration run {calrun_id}"
    calrun = db.calibration_run(calrun_id)
    permit(db, who, Action.SIGNOFF, target, [calrun.calibration])
    if decision is SignoffDecision.REJECT and not comment.strip():
        raise B2CalError("a rejection needs a comment saying why (the expert reruns from it)")
    try:  # a stale page is told so first, whatever else would stop the sign-off
        _current(
            db,
            calrun_id,
            attempt,
            "APPROVED" if decision is SignoffDecision.APPROVE else "REJECTED",
        )
    except StateConflict as exc:
        _refused(db, who, f"signoff {decision.value}", target, exc)
        raise
    return operations.act_on_signoff(
        db, calrun_id, decision, who.dn, comment, upload, attempt=attempt
    )


def retry(
    db: StateDatabase,
    who: Person,
    calrun_id: int,
    *,
    attempt: int | None = None,
    start: bool = True,
) -> tuple[list[CalibrationRun], str | None]:
    """Compute a stopped calibration run again (with its stopped dependants)."""
    target = f"calibration run {calrun_id}"
    calrun = db.calibration_run(calrun_id)
    permit(db, who, Action.RETRY, target, [calrun.calibration])
    try:
        _current(db, calrun_id, attempt, "rerun")
        return operations.rerun_calibration(db, calrun_id, who.dn, start=start, attempt=attempt)
    except StateConflict as exc:
        _refused(db, who, "rerun", target, exc)
        raise


def skip(
    db: StateDatabase,
    who: Person,
    calrun_id: int,
    comment: str,
    *,
    attempt: int | None = None,
    start: bool = True,
) -> tuple[list[CalibrationRun], str | None]:
    """Go on without a calibration run (its dependants use the input tags' payloads)."""
    target = f"calibration run {calrun_id}"
    calrun = db.calibration_run(calrun_id)
    permit(db, who, Action.SKIP, target, [calrun.calibration])
    try:
        _current(db, calrun_id, attempt, "SKIPPED")
    except StateConflict as exc:
        _refused(db, who, "skip", target, exc)
        raise
    return operations.skip_calibration(db, calrun_id, who.dn, comment, start=start, attempt=attempt)


def cancel(db: StateDatabase, who: Person, request_id: int) -> list[CalibrationRun]:
    """Cancel a request with its calibration runs and collector jobs: allowed to whoever may
    cancel every calibration of it."""
    target = f"request {request_id}"
    request = db.request(request_id)
    permit(db, who, Action.CANCEL, target, request.calibrations)
    try:
        return operations.cancel_request(db, request_id, who.dn)
    except StateConflict as exc:
        _refused(db, who, "cancel", target, exc)
        raise


#: Calibration runs whose collection has stopped, so its jobs may be reset.
STOPPED = frozenset({CalRunState.FAILED, CalRunState.CANCELLED, CalRunState.NOT_ENOUGH_DATA})


def resubmit(
    db: StateDatabase,
    who: Person,
    calrun_id: int,
    jobs: Collection[int] | None = None,
    *,
    attempt: int | None = None,
) -> list[int]:
    """Make failed (or chosen) collector jobs of a stopped collection start afresh at the
    next run of the calibration (a running one is refused: its jobs are in use)."""
    from b2cal.caf.jobcontrol import resubmit as resubmit_jobs
    from b2cal.caf.workspace import Workspace

    target = f"calibration run {calrun_id}"
    calrun = db.calibration_run(calrun_id)
    permit(db, who, Action.RESUBMIT, target, [calrun.calibration])
    try:
        _current(db, calrun_id, attempt, "resubmitted")
        if calrun.state not in STOPPED:
            stopped = ", ".join(sorted(s.value for s in STOPPED))
            raise StateConflict(
                calrun.label, calrun.state.value, "resubmitted",
                f"only the jobs of a stopped calibration run ({stopped}) are resubmitted",
            )  # fmt: skip
    except StateConflict as exc:
        _refused(db, who, "resubmit", target, exc)
        raise
    request = db.request(calrun.request_id)
    where = load_site(request.site_of(calrun.calibration))
    folder = where.request_folder(request.id) / "output"
    try:
        chosen = resubmit_jobs(Workspace(folder), calrun.calibration, jobs)
    except B2CalError as exc:
        _refused(db, who, "resubmit", target, exc)
        raise
    db.log_action(who.dn, "resubmit", target, "ok", {"jobs": chosen})
    return chosen


def submit_request(
    db: StateDatabase, who: Person, site: Site, draft: Request, *, start: bool = True
) -> tuple[Request, str | None]:
    """Create a request drafted (and shown) with ``operations.draft_request`` and start it:
    allowed to whoever may submit requests for every calibration in it."""
    permit(db, who, Action.SUBMIT_REQUEST, f"a {draft.kind.value} request", draft.calibrations)
    made = operations.new_request(
        db,
        site,
        kind=draft.kind,
        exp=draft.exp,
        runs=(draft.run_low, draft.run_high),
        calibrations=draft.calibrations,
        input_tags=draft.input_tags,
        reference_tag=draft.reference_tag,
        config=draft.config,
        open_ended=draft.open_ended,
        actor=who.dn,
        placement=draft.placement,
    )
    flow_run = operations.start_request(db, made, site) if start else None
    return made, flow_run


def promote(
    db: StateDatabase,
    who: Person,
    store: ConditionsStore,
    staging: str,
    running: str,
    start: ExpRun,
) -> IoVChange:
    """Merge a VALIDATED staging tag into the RUNNING tag from run ``start`` on (the
    coordinator's alone); the change is in the action log."""
    target = f"tag {running}"
    permit(db, who, Action.PROMOTE, target)
    try:
        change = promote_tag(store, staging, running, start)
    except B2CalError as exc:
        _refused(db, who, "promote", target, exc)
        raise
    db.log_action(
        who.dn, "promote", target, "ok",
        {"staging": staging, "from": f"{start.exp}/{start.run}", "added": len(change.add)},
    )  # fmt: skip
    return change
