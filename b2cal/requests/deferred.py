"""Starting a request's deferred calibrations: those that do not run inside its
``process-request`` run (placed at another site, or downstream of one that is; the rules are
in :mod:`b2cal.processing.placement`).

A deferred calibration starts as a ``calibrate`` deployment run on its site's pool once each of
its dependencies is uploaded or skipped, which may be days after the request started (an
expert signs a dependency off). So nothing waits for it: whatever may have made one ready —
a plan, an upload, a calibration ending, a skip — calls :func:`advance`, which starts those
that are ready (each claimed in the state database first, so two callers start it once) and
fails those that never can be (a dependency ended without payloads).
"""

from __future__ import annotations

import contextlib
import logging

from b2cal.cdb.store import ConditionsStore
from b2cal.db.database import StateDatabase
from b2cal.db.states import CalRunState, RequestState
from b2cal.errors import B2CalError, StateConflict
from b2cal.orchestrator.client import deployment, no_worker, start_deployment_run
from b2cal.orchestrator.labels import bucket_of, request_tags
from b2cal.processing.placement import deferred_now
from b2cal.processing.preparation import calibrations_of
from b2cal.processing.upload import UploadReport, upload_approved
from b2cal.sites import Site, load_site

log = logging.getLogger("b2cal.requests")

#: What a claimed calibration run's flow-run id says until its run exists.
STARTING = "starting"


def advance(db: StateDatabase, request_id: int) -> list[str]:
    """Start the request's deferred calibrations that may start now and fail those that never
    can; returns what was started, as ``"BeamSpot at bnl"``."""
    request = db.request(request_id)
    if request.state in (RequestState.CANCELLED, RequestState.PENDING):
        return []
    calibrations, _ = calibrations_of(request)
    runs = {run.calibration: run for run in db.calibration_runs(request_id)}
    ready, hopeless = deferred_now(request, calibrations, runs)
    for name, why in hopeless.items():
        with contextlib.suppress(StateConflict):  # taken meanwhile: its flow run decides
            db.move(runs[name].id, CalRunState.FAILED, message=why,
                    expected=frozenset({CalRunState.PLANNED}))  # fmt: skip
    started = []
    # the request's tags, but the site where the calibration runs
    tags = [t for t in request_tags(request, bucket_of(db, request)) if not t.startswith("site:")]
    for run in ready:
        if not db.claim_start(run.id, STARTING):
            continue  # another caller starts it
        site = load_site(request.site_of(run.calibration))
        try:
            waiting = no_worker(site)
            flow_run = start_deployment_run(
                deployment("calibrate", site),
                {"request_id": request_id, "calibration": run.calibration, "site": site.name},
                [*tags, f"site:{site.name}", f"calib:{run.calibration}"],
            )
        except Exception as exc:  # the API, the deployment, the pool: said, tried again later
            reason = str(exc) if isinstance(exc, B2CalError) else f"{type(exc).__name__}: {exc}"
            message = (
                f"could not be started at site {site.name}: {reason} (b2cal request upload "
                f"{request_id} tries again)"
            )
            db.set_flow_run(run.id, None, message)
            log.warning("%s %s", run.label, message)
            continue
        note = f"; {waiting}" if waiting else ""
        db.set_flow_run(run.id, flow_run, f"started at site {site.name}: flow run {flow_run}{note}")
        started.append(f"{run.calibration} at {site.name}")
        log.info("%s started at site %s (flow run %s)", run.label, site.name, flow_run)
    if hopeless:
        db.finish_request(request_id)
    return started


def upload_and_advance(
    db: StateDatabase, store: ConditionsStore, site: Site, request_id: int
) -> tuple[UploadReport, list[str]]:
    """Upload what may be uploaded at ``site``, then start what that made ready."""
    report = upload_approved(db, store, site, request_id)
    return report, advance(db, request_id)
