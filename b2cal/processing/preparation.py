"""Getting a request ready for the engine: inputs fixed, input tags exported, plan recorded.

The first plan of a request fixes its inputs: the files the state database has registered for
its runs (``files.json``: a file registered later is a late file, not an input) and the
payloads of its input tags valid in its runs (``inputdb/<tag>/``, the last links of the
database chain, recorded in each payload's provenance by the engine). Collector jobs on batch
nodes read those files; they never talk to a database. Later plans (a retried flow run) find
both and use them as they are.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

from b2cal.caf.calibration import Calibration
from b2cal.caf.config import configured_calibrations
from b2cal.caf.plan import CalibrationRequest, Plan, make_plan
from b2cal.caf.steps import plan
from b2cal.cdb.model import TagState
from b2cal.cdb.operations import export_local_database
from b2cal.cdb.store import ConditionsStore
from b2cal.core.files import atomic_write_json
from b2cal.core.iov import IoV
from b2cal.db import discovery
from b2cal.db.database import StateDatabase
from b2cal.db.model import Request
from b2cal.errors import B2CalError, TagExists
from b2cal.processing.area import RequestArea
from b2cal.sites import Site


def calibrations_of(request: Request) -> tuple[dict[str, Calibration], dict[str, Any]]:
    """The request's calibrations (dependencies included) with its expert settings applied."""
    configured, overrides, _ = configured_calibrations(
        request.calibrations, request.config, f"the settings of request {request.id}"
    )
    return configured, overrides


def run_range(request: Request) -> IoV:
    return IoV(request.exp, request.run_low, request.exp, request.run_high)


def input_files(db: StateDatabase, site: Site, request: Request) -> list[str]:
    """Paths of the registered files the request reads (B2CalError if there are none)."""
    calibrations, _ = calibrations_of(request)
    streams = {s for c in calibrations.values() for s in c.input_streams}
    files = discovery.registered_files(
        db, site.name, request.exp, request.run_low, request.run_high, streams
    )
    if not files:
        raise B2CalError(
            f"no registered data at site {site.name} for experiment {request.exp} runs "
            f"{request.run_low}-{request.run_high} (streams {', '.join(sorted(streams))}): "
            "run b2cal discover, or choose the site that holds the data"
        )
    return [str(f.path) for f in files]


def engine_request(request: Request, area: RequestArea) -> CalibrationRequest:
    return CalibrationRequest(
        exp=request.exp,
        first_run=request.run_low,
        last_run=request.run_high,
        files_from=area.files_list,
        open_ended=request.open_ended,
        input_databases=tuple(area.input_tag(tag) for tag in request.input_tags),
    )


def export_input_tags(store: ConditionsStore, request: Request, area: RequestArea) -> None:
    """Each input tag's payloads valid in the request's runs, once, as a local database."""
    for tag in request.input_tags:
        folder = area.input_tag(tag)
        if not (folder / "database.txt").is_file():
            export_local_database(store, tag, folder, within=run_range(request))


def ensure_staging_tag(store: ConditionsStore, request: Request) -> None:
    """The request's staging tag, OPEN (created once; a retried flow run finds it)."""
    try:
        store.create_tag(request.staging_tag, f"b2cal {request.label}")
    except TagExists:
        state = store.tag(request.staging_tag).state
        if state is not TagState.OPEN and state is not TagState.TESTING:
            raise B2CalError(
                f"staging tag {request.staging_tag} of request {request.id} is {state.value}"
            ) from None


def prepare(
    db: StateDatabase,
    store: ConditionsStore,
    site: Site,
    request: Request,
    rerun: Collection[str] = (),
) -> tuple[Plan, dict[str, Calibration]]:
    """Fix the request's inputs, create its staging tag, and plan it in its workspace;
    ``rerun`` names calibrations whose results (and their dependants') are forgotten."""
    area = RequestArea(site.request_folder(request.id))
    area.root.mkdir(parents=True, exist_ok=True)
    if not area.files_list.is_file():
        atomic_write_json(area.files_list, input_files(db, site, request))
    export_input_tags(store, request, area)
    ensure_staging_tag(store, request)
    calibrations, overrides = calibrations_of(request)
    made = plan(area.workspace, engine_request(request, area), calibrations, overrides, rerun=rerun)
    return made, calibrations


def dry_run(
    db: StateDatabase, site: Site, request: Request, scratch: Path
) -> tuple[Plan, dict[str, Calibration]]:
    """The plan a request would get, computed in ``scratch`` (nothing else is created)."""
    area = RequestArea(scratch)
    area.files_list.write_text(json.dumps(input_files(db, site, request)))
    calibrations, overrides = calibrations_of(request)
    return make_plan(engine_request(request, area), calibrations, overrides), calibrations


def blocked_by(db: StateDatabase, request_id: int, dependencies: list[str]) -> list[str]:
    """Why a calibration of the request cannot run: its dependencies that ended without
    payloads (FAILED, NOT_ENOUGH_DATA, CANCELLED), as ``"X ended FAILED"``."""
    from b2cal.db.states import CalRunState

    ended = (CalRunState.FAILED, CalRunState.NOT_ENOUGH_DATA, CalRunState.CANCELLED)
    runs = [db.calibration_run_of(request_id, dep) for dep in dependencies]
    return [f"{run.calibration} ended {run.state.value}" for run in runs if run.state in ended]
