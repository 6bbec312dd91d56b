"""One processing request's run at its site, as the ``process-request`` flow drives it: begun
(its flow run recorded; its title and tags), planned (what this site computes, which of it runs
in the flow's process, the deferred calibrations that may start), ended (what is approved
uploaded, the request's final state). The flow runs the calibrations in between, as subflows;
the rules are here, and tested without Prefect."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from b2cal.cdb.store import ConditionsStore
from b2cal.db.database import StateDatabase
from b2cal.db.model import Request
from b2cal.db.states import RequestState
from b2cal.errors import B2CalError, StateConflict
from b2cal.orchestrator.labels import bucket_of, request_tags, request_title
from b2cal.processing.lifecycle import failed
from b2cal.processing.placement import in_process
from b2cal.processing.preparation import calibrations_of, prepare
from b2cal.requests.deferred import advance, upload_and_advance
from b2cal.sites import Site


@dataclass(frozen=True)
class Begun:
    """A request's run, begun: its title (flow-run names) and its tags (every flow run)."""

    title: str
    tags: list[str]


def begin(db: StateDatabase, request_id: int, flow_run_id: str) -> Begun:
    """Record the flow run that processes the request (refused if the request was cancelled:
    nothing is prepared for it)."""
    request = db.request(request_id)
    if request.state is RequestState.CANCELLED:
        raise StateConflict(request.label, request.state.value, RequestState.RUNNING.value)
    db.set_request_flow_run(request_id, flow_run_id)
    bucket = bucket_of(db, request)
    return Begun(request_title(request, bucket), request_tags(request, bucket))


@dataclass(frozen=True)
class Planned:
    """What the request's run computes in its own process (dependencies first), and the
    deferred calibrations started elsewhere."""

    here: list[str]
    started: list[str] = field(default_factory=list)


def plan(db: StateDatabase, store: ConditionsStore, site: Site, request_id: int) -> Planned:
    """Fix the request's inputs here, export its input tags, create its staging tag, plan what
    this site computes, start its calibration runs; a plan that fails leaves the request and
    the calibration runs it would have computed here FAILED, saying why. Then start the
    deferred calibrations that may start."""
    request = db.request(request_id)
    try:
        prepare(db, store, site, request)
        db.start_request(request_id)
        calibrations, _ = calibrations_of(request)
        runs = {run.calibration: run for run in db.calibration_runs(request_id)}
        here = in_process(request, calibrations, runs)
    except Exception as exc:  # the request and what it would have computed say why
        line = f"not planned: {exc}"
        db.fail_request(request_id, line)
        for run in db.calibration_runs(request_id):
            if run.state.active and request.site_of(run.calibration) == site.name:
                failed(db, run.id, B2CalError(line))
        raise
    return Planned(here, advance(db, request_id))


def end(
    db: StateDatabase,
    store: ConditionsStore,
    site: Site,
    request_id: int,
    failures: Sequence[str] = (),
) -> Request:
    """Once the calibrations here have stopped: upload what is approved (and start what that
    makes ready elsewhere), then the request's state from its calibration runs."""
    upload_and_advance(db, store, site, request_id)
    return db.finish_request(request_id, "; ".join(failures) or None)
