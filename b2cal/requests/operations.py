"""Requests from the user's side: create (checked first), start on the site's pool, cancel,
sign off. Each action is checked before anything is written, and written before Prefect is
asked to act, so a refused or failed action leaves nothing half done."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from b2cal.caf.config import configured_calibrations
from b2cal.caf.graph import upstream
from b2cal.cdb.connect import open_store
from b2cal.db import discovery
from b2cal.db.database import SYSTEM, StateDatabase
from b2cal.db.model import CalibrationRun, Request, Signoff
from b2cal.db.states import RERUNNABLE, RequestState, SignoffDecision
from b2cal.errors import B2CalError
from b2cal.orchestrator.client import (
    check_reachable,
    deployment,
    no_worker,
    prefect_client,
    start_deployment_run,
)
from b2cal.processing.placement import computed_at
from b2cal.processing.preparation import calibrations_of, input_files, standing_in
from b2cal.processing.upload import upload_approved
from b2cal.requests.deferred import upload_and_advance
from b2cal.sites import SITE_NAME, RequestKind, Site, load_site, site_names

log = logging.getLogger("b2cal.requests")

#: The message of a request cancelled because its run could not be created (its bucket gets
#: a new request at the next discovery).
NOT_STARTED = "cancelled: its process-request run could not be created"


def _default_input_tags(site: Site) -> list[str]:
    with open_store(site.cdb_database_url) as store:
        return [site.running_tag] if site.running_tag in {t.name for t in store.tags()} else []


def draft_request(
    site: Site,
    kind: RequestKind,
    exp: int,
    runs: tuple[int, int],
    calibrations: Sequence[str],
    input_tags: Sequence[str] | None,
    config: dict[str, Any],
    open_ended: bool,
    reference_tag: str | None = None,
    placement: dict[str, str] | None = None,
) -> Request:
    """A request as it would be created (checked; id 0, nothing stored)."""
    if not calibrations:
        raise B2CalError("--calibrations names no calibration")
    if exp < 0 or runs[0] < 0:
        raise B2CalError("experiment and runs must be numbers >= 0")
    if runs[1] < runs[0]:
        raise B2CalError(f"the run range {runs[0]}-{runs[1]} ends before it starts")
    configured, _, _ = configured_calibrations(calibrations, config, "the request's settings")
    from b2cal.caf.graph import topological_order

    placed = {name: where for name, where in (placement or {}).items() if where != site.name}
    unknown = sorted(set(placed) - set(configured))
    if unknown:
        raise B2CalError(
            f"--place names {', '.join(unknown)}, which the request does not calibrate "
            f"(it calibrates {', '.join(topological_order(configured))})"
        )
    known = site_names()
    for where in sorted(set(placed.values())):
        # A name, looked up among the known sites: never joined into a path.
        if not SITE_NAME.fullmatch(where):
            raise B2CalError(
                "--place names something that is not a site name (letters, digits, '-' and '_')"
            )
        if where not in known:
            raise B2CalError(
                f"--place names the site {where!r}, which is not a known site "
                f"(known: {', '.join(known) or 'none'})"
            )
        load_site(where)  # a known site whose file is broken is refused now

    tags = list(input_tags) if input_tags is not None else _default_input_tags(site)
    named = [*tags, *([reference_tag] if reference_tag else [])]
    if named:
        with open_store(site.cdb_database_url) as store:
            store.check_chain(named)  # unknown tags are refused now, not at plan time
    now = datetime.now(UTC)
    return Request(
        id=0,
        kind=kind,
        site=site.name,
        exp=exp,
        run_low=runs[0],
        run_high=runs[1],
        bucket_id=None,
        calibrations=topological_order(configured),
        input_tags=tags,
        reference_tag=reference_tag,
        staging_tag=f"staging-{kind.value}-<id>",
        config=config,
        open_ended=open_ended,
        state=RequestState.PENDING,
        created=now,
        created_by="",
        updated=now,
        flow_run_id=None,
        message=None,
        placement=placed,
    )


def new_request(
    db: StateDatabase,
    site: Site,
    *,
    kind: RequestKind,
    exp: int,
    runs: tuple[int, int],
    calibrations: Sequence[str],
    input_tags: Sequence[str] | None,
    reference_tag: str | None,
    config: dict[str, Any],
    open_ended: bool,
    actor: str,
    bucket_id: int | None = None,
    placement: dict[str, str] | None = None,
    flow_run_id: str | None = None,
) -> Request:
    """Check a request (calibrations, settings, tags, sites, registered data) and store it
    (as the request of ``flow_run_id``, when a flow run makes it)."""
    draft = draft_request(
        site, kind, exp, runs, calibrations, input_tags, config, open_ended, reference_tag,
        placement,
    )  # fmt: skip
    check_data(db, draft)
    return db.create_request(
        kind=kind,
        site=site.name,
        exp=exp,
        run_low=runs[0],
        run_high=runs[1],
        calibrations=draft.calibrations,
        input_tags=draft.input_tags,
        reference_tag=reference_tag,
        config=config,
        open_ended=open_ended,
        bucket_id=bucket_id,
        placement=draft.placement,
        actor=actor,
        flow_run_id=flow_run_id,
    )


def check_data(db: StateDatabase, request: Request) -> None:
    """Refuse a request now if a site it runs calibrations at has no registered data for them."""
    calibrations, _ = calibrations_of(request)
    for where in sorted({request.site_of(name) for name in calibrations}):
        input_files(db, load_site(where), request, computed_at(request, calibrations, {}, where))


def create_prompt_request(db: StateDatabase, site: Site, bucket_id: int, actor: str) -> Request:
    """The prompt request of a closed bucket (the bucket becomes PROCESSING)."""
    bucket = discovery.bucket(db, bucket_id)
    return new_request(
        db,
        site,
        kind=RequestKind.PROMPT,
        exp=bucket.exp,
        runs=(bucket.first_run, bucket.last_run),
        calibrations=site.prompt_calibrations,
        input_tags=None,
        reference_tag=None,
        config={},
        open_ended=True,
        actor=actor,
        bucket_id=bucket_id,
    )


def start_request(db: StateDatabase, request: Request, site: Site) -> str:
    """Start the request's ``process-request`` run on the site's pool; its flow-run id.

    A pool without a worker online gets the run all the same (it starts when a worker comes),
    and the request's message says that it waits for one. If the run cannot be created, the
    request is cancelled (nothing is left half started) and the error says so.
    """
    try:
        waiting = no_worker(site)
        flow_run = start_deployment_run(
            deployment("process-request", site),
            {"request_id": request.id, "site": site.name},
            [f"request:{request.id}", f"kind:{request.kind.value}", f"site:{site.name}"],
        )
    except Exception as exc:
        db.cancel_request(request.id, SYSTEM, started=False)  # its bucket gets another
        db.finish_request(request.id, NOT_STARTED)
        reason = str(exc) if isinstance(exc, B2CalError) else f"{type(exc).__name__}: {exc}"
        raise B2CalError(
            f"{request.label} could not be started, so it is cancelled: {reason}"
        ) from None
    db.set_request_flow_run(request.id, flow_run)
    if waiting:
        db.finish_request(request.id, waiting)
        log.warning("request %d is %s", request.id, waiting)
    return flow_run


def cancel_request(db: StateDatabase, request_id: int, actor: str) -> list[CalibrationRun]:
    """Cancel the request in the state database, then its flow runs in Prefect (their
    collector jobs stop with them)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
    from prefect.client.schemas.objects import StateType
    from prefect.states import Cancelling

    cancelled = db.cancel_request(request_id, actor)
    try:
        with prefect_client() as client:
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    tags=FlowRunFilterTags(all_=[f"request:{request_id}"])
                )
            )
            for run in runs:
                if run.state is not None and run.state.type in (
                    StateType.RUNNING,
                    StateType.SCHEDULED,
                    StateType.PENDING,
                    StateType.PAUSED,
                ):
                    client.set_flow_run_state(run.id, Cancelling(), force=True)
    except B2CalError as exc:
        raise B2CalError(
            f"request {request_id} is cancelled, but its flow runs could not be stopped: {exc}"
        ) from None
    return cancelled


def act_on_signoff(
    db: StateDatabase,
    calrun_id: int,
    decision: SignoffDecision,
    actor: str,
    comment: str,
    upload: str = "flow",
    attempt: int | None = None,
) -> tuple[Signoff, str]:
    """Record the decision (refused unless the run awaits one), then start the upload at the
    site that computed the calibration.

    ``upload``: ``flow`` starts that site's ``sign-off`` deployment run; ``here`` uploads from
    this process (which must see that site's workspace); ``no`` leaves it to a later sign-off
    run. ``attempt``: the attempt the decider saw (a newer one is refused). Returns the
    sign-off and a line saying what happens next.
    """
    if upload == "flow":
        prefect_url = _reachable_or_none()
        if prefect_url is None:
            raise B2CalError(
                "the Prefect API cannot be reached, so the upload could not be started: nothing "
                "was recorded (use --upload here to upload from this process)"
            )
    calrun = db.calibration_run(calrun_id)
    request = db.request(calrun.request_id)
    site = load_site(request.site_of(calrun.calibration))
    signed = db.signoff(calrun_id, decision, actor, comment, attempt)
    if decision is SignoffDecision.REJECT:
        return signed, (
            "rejected: nothing is uploaded; its dependants wait. To compute it again: "
            f"b2cal request rerun {calrun_id}; to go on without it: b2cal request skip "
            f"{calrun_id}"
        )
    if upload == "no":
        return signed, "approved; the upload waits for the next sign-off run"
    if upload == "here":
        with open_store(site.cdb_database_url) as store:
            report, started = upload_and_advance(db, store, site, request.id)
        blocked = "; ".join(f"{n}: {why}" for n, why in report.blocked.items())
        return signed, (
            f"uploaded: {', '.join(report.uploaded) or 'nothing'}"
            + (f" (waiting: {blocked})" if blocked else "")
            + (f"; started {', '.join(started)}" if started else "")
        )
    try:
        flow_run = start_upload(site, calrun_id)
    except B2CalError as exc:
        raise B2CalError(
            f"approved by {actor} (recorded), but the upload could not be started: {exc}; "
            f"start it later with: b2cal request upload {request.id}"
        ) from None
    return signed, f"upload started: sign-off/{site.name} flow run {flow_run}"


def start_upload(site: Site, calrun_id: int) -> str:
    """A ``sign-off`` run that uploads what the approval of ``calrun_id`` allows."""
    return start_deployment_run(
        deployment("sign-off", site),
        {"calibration_run_id": calrun_id, "site": site.name},
        [f"calrun:{calrun_id}", f"site:{site.name}"],
    )


def rerun_calibration(
    db: StateDatabase, calrun_id: int, actor: str, start: bool = True, attempt: int | None = None
) -> tuple[list[CalibrationRun], str | None]:
    """Compute a stopped calibration again, with its stopped dependants in the request: a new
    attempt of each (needing a new sign-off), the staging tag OPEN again; then the request's
    ``process-request`` run. Each site plans its new attempts again when it comes to them
    (their results forgotten; unchanged collector jobs reused), and the earlier payloads
    leave the staging tag when the new ones are uploaded. ``attempt``: the attempt the caller
    saw (a newer one is refused). Returns the calibration runs and the flow-run id."""
    calrun = db.calibration_run(calrun_id)
    request = db.request(calrun.request_id)
    if start:
        check_reachable()  # before anything changes
    names = _downstream(request, calrun.calibration)
    runs = {c.calibration: c for c in db.calibration_runs(request.id)}
    chosen = [runs[calrun.calibration].id] + [
        runs[n].id for n in names if n in runs and runs[n].state in RERUNNABLE
    ]
    again = db.rerun(chosen, actor, attempt)
    _reopen_staging(request)
    return again, _restart(db, request, start)


def skip_calibration(
    db: StateDatabase,
    calrun_id: int,
    actor: str,
    comment: str,
    start: bool = True,
    attempt: int | None = None,
) -> tuple[list[CalibrationRun], str | None]:
    """Skip a calibration run: its dependants use the request's input tags instead of its
    payloads; those that had stopped are computed again (new attempts). Then the request's
    ``process-request`` run goes on with what is left (``start``), or, without it, the
    request is brought up to date here (a request left with nothing to do is DONE and its
    staging tag TESTING). Returns the skipped run and the rerun ones, and the flow-run id."""
    calrun = db.calibration_run(calrun_id)
    request = db.request(calrun.request_id)
    if start:
        check_reachable()
    if not comment.strip():
        raise B2CalError("a skip needs --comment saying why (kept in the action log)")
    with open_store(load_site(request.site).cdb_database_url) as store:
        standing_in(store, request, calrun.calibration)
    downstream = _downstream(request, calrun.calibration)
    changed = db.skip(calrun_id, actor, comment, downstream, attempt)
    if len(changed) > 1:
        _reopen_staging(request)
    flow_run = _restart(db, request, start)
    if flow_run is None:
        with open_store(load_site(request.site).cdb_database_url) as store:
            upload_approved(db, store, load_site(request.site), request.id)
    return changed, flow_run


def _downstream(request: Request, name: str) -> list[str]:
    """Every calibration of the request that depends on ``name``, directly or not."""
    calibrations, _ = calibrations_of(request)
    return [n for n in calibrations if name in upstream(n, calibrations)]


def _reopen_staging(request: Request) -> None:
    from b2cal.cdb.model import TagState

    with open_store(load_site(request.site).cdb_database_url) as store:
        if store.tag(request.staging_tag).state is TagState.TESTING:
            store.set_state(request.staging_tag, TagState.OPEN)


def _restart(db: StateDatabase, request: Request, start: bool) -> str | None:
    return start_request(db, db.request(request.id), load_site(request.site)) if start else None


def _reachable_or_none() -> str | None:
    try:
        return check_reachable()
    except B2CalError:
        return None
