"""Uploading approved calibrations into their request's staging tag.

A calibration run is uploaded when it is APPROVED, its approval is in the action log (an
approval that was never logged is refused), and every calibration it depends on inside the
request is UPLOADED or SKIPPED: a rejected dependency blocks its dependants' uploads until it
is rerun and approved. Uploading is idempotent (the same payloads at the same IoVs change
nothing), so a retried sign-off uploads nothing twice; a rerun's upload first removes the
payloads its earlier attempt left in the staging tag. Once every calibration run of the
request is UPLOADED or SKIPPED, the staging tag moves to TESTING.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from b2cal.caf.graph import topological_order
from b2cal.cdb.model import TagState
from b2cal.cdb.operations import read_local_database, upload
from b2cal.cdb.store import ConditionsStore
from b2cal.db.database import SYSTEM, StateDatabase
from b2cal.db.model import CalibrationRun
from b2cal.db.states import CalRunState, RequestState
from b2cal.errors import StateConflict
from b2cal.processing.area import RequestArea
from b2cal.processing.preparation import calibrations_of
from b2cal.sites import Site

log = logging.getLogger("b2cal.processing")


@dataclass
class UploadReport:
    uploaded: list[str] = field(default_factory=list)
    #: Approved but waiting: calibration -> why.
    blocked: dict[str, str] = field(default_factory=dict)
    staging_tag_state: str = ""


def _remove_earlier(
    store: ConditionsStore, staging: str, calrun: CalibrationRun, area: RequestArea
) -> None:
    """Remove from the staging tag the payloads of this calibration that the new output does
    not hold (what an earlier attempt uploaded)."""
    outputdb = area.workspace.calibration(calrun.calibration).outputdb
    new = read_local_database(outputdb)
    names = {entry.name for entry in new}
    wanted = {(entry.name, entry.verified_checksum(), entry.iov) for entry in new}
    stale = [
        entry
        for entry in store.iovs(staging)
        if entry.name in names and (entry.name, entry.payload.checksum, entry.iov) not in wanted
    ]
    if stale:
        store.remove_iovs(staging, stale)
        log.info(
            "%s: removed %d earlier payload IoVs from %s", calrun.calibration, len(stale), staging
        )


def upload_approved(
    db: StateDatabase, store: ConditionsStore, site: Site, request_id: int
) -> UploadReport:
    """Upload every approved calibration run of the request computed at ``site`` that may be
    uploaded now (the others are uploaded by their own site)."""
    area = RequestArea(site.request_folder(request_id))
    with area.turn("upload"):
        return _upload_approved(db, store, site.name, area, request_id)


def _upload_approved(
    db: StateDatabase, store: ConditionsStore, site: str, area: RequestArea, request_id: int
) -> UploadReport:
    request = db.request(request_id)
    if request.state is RequestState.CANCELLED:
        raise StateConflict(request.label, request.state.value, "uploaded", "it was cancelled")
    calibrations, _ = calibrations_of(request)
    runs = {c.calibration: c for c in db.calibration_runs(request_id)}
    report = UploadReport()
    for name in topological_order(calibrations):
        calrun = runs.get(name)
        if calrun is None or calrun.state is not CalRunState.APPROVED:
            continue
        if request.site_of(name) != site:  # its outputs are in another site's workspace
            continue
        waiting = [
            dep for dep in calibrations[name].depends_on if dep in runs and not runs[dep].state.done
        ]
        if waiting:
            report.blocked[name] = "waiting for " + ", ".join(
                f"{dep} ({runs[dep].state.value})" for dep in waiting
            )
            continue
        if db.approval(calrun.id) is None:
            db.log_action(
                SYSTEM,
                "upload",
                f"calibration run {calrun.id}",
                "refused",
                {"why": "its approval is not in the action log"},
            )
            report.blocked[name] = "its approval is not in the action log"
            continue
        _remove_earlier(store, request.staging_tag, calrun, area)
        upload(store, area.workspace.calibration(name).outputdb, request.staging_tag)
        runs[name] = db.move(calrun.id, CalRunState.UPLOADED, message=f"in {request.staging_tag}")
        db.log_action(
            SYSTEM, "upload", f"calibration run {calrun.id}", "ok", {"tag": request.staging_tag}
        )
        report.uploaded.append(name)
    finished = bool(runs) and all(c.state.done for c in runs.values())
    if finished and store.tag(request.staging_tag).state is TagState.OPEN:
        store.set_state(request.staging_tag, TagState.TESTING)
    report.staging_tag_state = store.tag(request.staging_tag).state.value
    db.finish_request(request_id)
    return report
