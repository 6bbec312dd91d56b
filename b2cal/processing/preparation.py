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
import shutil
import tempfile
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from b2cal.caf.calibration import Calibration
from b2cal.caf.chain import database_digest
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
from b2cal.db.states import CalRunState
from b2cal.errors import B2CalError, InputsChanged, TagExists
from b2cal.processing.area import RequestArea
from b2cal.processing.placement import computed_at
from b2cal.sites import Site


def calibrations_of(request: Request) -> tuple[dict[str, Calibration], dict[str, Any]]:
    """The request's calibrations (dependencies included) with its expert settings applied."""
    configured, overrides, _ = configured_calibrations(
        request.calibrations, request.config, f"the settings of request {request.id}"
    )
    return configured, overrides


def run_range(request: Request) -> IoV:
    return IoV(request.exp, request.run_low, request.exp, request.run_high)


def input_files(
    db: StateDatabase, site: Site, request: Request, names: Collection[str] | None = None
) -> list[str]:
    """Paths of the registered files at ``site`` that the request's calibrations (or those
    of them in ``names``) read; B2CalError if there are none."""
    calibrations, _ = calibrations_of(request)
    chosen = [c for n, c in calibrations.items() if names is None or n in names]
    streams = {s for c in chosen for s in c.input_streams}
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


def standing_in(store: ConditionsStore, request: Request, name: str) -> list[str]:
    """The input tags that hold ``name``'s payloads (named after it, as its dependants read
    them) for some of the request's runs: what stands in for it when it is skipped. A skip
    that would leave a dependant with none is refused, naming the dependants and what they
    would need."""
    calibrations, _ = calibrations_of(request)
    dependants = sorted(n for n, c in calibrations.items() if name in c.depends_on)
    runs = run_range(request)
    holding = [
        tag
        for tag in request.input_tags
        if any(entry.iov.overlaps(runs) for entry in store.iovs(tag, name))
    ]
    if dependants and not holding:
        tags = ", ".join(request.input_tags) or "none"
        raise B2CalError(
            f"{name} cannot be skipped: {', '.join(dependants)} read its payloads, and no input "
            f"tag of {request.label} (input tags: {tags}) holds a {name} payload for runs "
            f"{request.run_low}-{request.run_high}; rerun it, or make a new request with an "
            "input tag that holds one"
        )
    return holding


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
) -> tuple[Plan | None, dict[str, Calibration]]:
    """Fix the request's inputs at ``site``, create its staging tag, and plan, in the site's
    workspace, the calibrations the site computes (none: no plan).

    The others are planned as computed elsewhere: skipped ones leave their dependants to the
    input tags, those of other sites arrive in ``upstream/<Calibration>/``. A calibration
    whose attempt in the state database is newer than the one planned here (a rerun, a skip
    of something it depends on) is planned again, its results forgotten, as are those named
    in ``rerun``. Plans of one workspace take turns.
    """
    calibrations, overrides = calibrations_of(request)
    runs = {run.calibration: run for run in db.calibration_runs(request.id)}
    here = computed_at(request, calibrations, runs, site.name)
    ensure_staging_tag(store, request)
    if not here:
        return None, calibrations
    area = RequestArea(site.request_folder(request.id))
    with area.turn("plan"):
        if not area.files_list.is_file():
            atomic_write_json(area.files_list, input_files(db, site, request, here))
        export_input_tags(store, request, area)
        planned = _planned_attempts(area)
        attempts = {name: runs[name].attempt if name in runs else 1 for name in here}
        newer = [n for n in here if n in planned and attempts[n] > planned[n]]
        elsewhere = {
            name: None
            if name in runs and runs[name].state is CalRunState.SKIPPED
            else area.upstream(name)
            for name in calibrations
            if name not in here
        }
        try:
            made = plan(
                area.workspace,
                engine_request(request, area),
                calibrations,
                overrides,
                rerun=[n for n in here if n in set(rerun) | set(newer)],
                elsewhere=elsewhere,
            )
        except InputsChanged as exc:  # the request's own advice, not caf run's
            if not exc.replaced or exc.calibration not in runs:
                raise
            accept = f"b2cal request rerun {runs[exc.calibration].id}"
            raise InputsChanged(exc.output, exc.calibration, exc.changed, True, accept) from None
        atomic_write_json(area.attempts, {**planned, **attempts})
    return made, calibrations


def planned_attempt(site: Site, request_id: int, calibration: str) -> int | None:
    """The attempt of ``calibration`` as last planned in the site's workspace (None: never)."""
    return _planned_attempts(RequestArea(site.request_folder(request_id))).get(calibration)


def _planned_attempts(area: RequestArea) -> dict[str, int]:
    try:
        found = json.loads(area.attempts.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise B2CalError(f"{area.attempts} is unreadable ({exc})") from None
    return {str(k): int(v) for k, v in found.items()}


def fetch_upstream(
    db: StateDatabase, store: ConditionsStore, site: Site, request: Request, calibration: str
) -> list[str]:
    """Bring into the site's workspace the payloads of every dependency of ``calibration``
    computed at another site (from the staging tag, where they are once uploaded); B2CalError
    if one is not uploaded. Returns the dependencies whose payloads changed."""
    area = RequestArea(site.request_folder(request.id))
    record = area.workspace.calibration(calibration).record()
    fetched = []
    for dep, folder in record.elsewhere.items():
        if folder is None:
            continue  # skipped: the input tags stand in
        run = db.calibration_run_of(request.id, dep)
        if run.state is not CalRunState.UPLOADED:
            raise B2CalError(
                f"{calibration} needs the payloads of {dep} (computed at site "
                f"{request.site_of(dep)}), which is {run.state.value}, not uploaded"
            )
        if export_upstream(store, request, area, dep):
            fetched.append(dep)
    return fetched


def export_upstream(
    store: ConditionsStore, request: Request, area: RequestArea, calibration: str
) -> bool:
    """The payloads that ``calibration`` (computed at another site) uploaded into the request's
    staging tag, cut to the request's runs, as the local database ``upstream/<calibration>/``
    where the plan expects them; written again only if they changed (a rerun uploaded
    others). Whether the folder changed."""
    folder = area.upstream(calibration)
    scratch = Path(tempfile.mkdtemp(prefix=f".{calibration}.", dir=folder.parent.parent))
    try:
        written = export_local_database(
            store,
            request.staging_tag,
            scratch / "db",
            within=run_range(request),
            select=lambda entry: entry.payload.provenance.get("calibration") == calibration,
        )
        if not written:
            raise B2CalError(
                f"{request.staging_tag} holds no payloads of {calibration}, which "
                f"{request.label} needs from site {request.site_of(calibration)}"
            )
        if (folder / "database.txt").is_file() and database_digest(folder) == database_digest(
            scratch / "db"
        ):
            return False
        folder.parent.mkdir(parents=True, exist_ok=True)
        if folder.exists():
            folder.rename(scratch / "old")
        (scratch / "db").rename(folder)
        return True
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def dry_run(
    db: StateDatabase, sites: Mapping[str, Site], request: Request, scratch: Path
) -> dict[str, Plan]:
    """The plan a request would get at each of its ``sites`` (by name), computed in
    ``scratch`` (nothing else is created)."""
    calibrations, overrides = calibrations_of(request)
    plans = {}
    for name, site in sites.items():
        here = computed_at(request, calibrations, {}, name)
        if not here:
            continue
        area = RequestArea(scratch / name)
        area.root.mkdir(parents=True)
        area.files_list.write_text(json.dumps(input_files(db, site, request, here)))
        elsewhere: dict[str, Path | None] = {
            n: area.upstream(n) for n in calibrations if n not in here
        }
        plans[name] = make_plan(engine_request(request, area), calibrations, overrides, elsewhere)
    return plans
