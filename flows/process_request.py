"""``process-request``: every calibration of a request, in dependency order, at the request's
site; independent calibrations at the same time.

Each calibration is an in-process ``calibrate`` subflow started in a thread as soon as the
calibrations it depends on have written their ``outputdb`` (not when their flow runs return:
validation and sign-off of a dependency do not hold its dependants back). A dependency that
ended without payloads (FAILED, NOT_ENOUGH_DATA) leaves its dependants FAILED, saying why.
"""

from __future__ import annotations

import contextlib
import contextvars
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from prefect import flow, get_run_logger, tags, task
from prefect.cache_policies import NONE
from prefect.runtime import flow_run

from b2cal.db.states import CalRunState, RequestState
from b2cal.errors import StateConflict
from b2cal.processing.preparation import blocked_by, prepare
from b2cal.processing.upload import upload_approved
from b2cal.sites import Site
from flows.calibrate import calibrate
from flows.common import (
    bucket_of,
    output_written,
    records,
    request_tags,
    request_title,
    site_of,
    stop_everything,
    stopping,
    subflow_turns,
)


@task(name="plan", cache_policy=NONE, task_run_name="plan · request {request_id}")
def plan_task(site: Site, request_id: int) -> dict[str, list[str]]:
    """Fix the request's inputs, export its input tags, create its staging tag, plan it;
    returns each calibration's dependencies inside the request."""
    with records(site) as (db, store):
        made, calibrations = prepare(db, store, site, db.request(request_id))
        db.start_request(request_id)
        return {name: list(calibrations[name].depends_on) for name in made.order}


def _run_one(site: Site, request_id: int, name: str, depends: list[str], title: str) -> str:
    """Wait for the dependencies' outputs, then run the calibration as a subflow; whatever
    happens, its own output event is set at the end, so its dependants never wait forever."""
    try:
        for dep in depends:
            while not output_written(request_id, dep).wait(timeout=1.0):
                if stopping.is_set():
                    return "stopped"
        if stopping.is_set():
            return "stopped"
        with records(site) as (db, _):
            blocked = blocked_by(db, request_id, depends)
            calrun = db.calibration_run_of(request_id, name)
            if blocked and calrun.state.active:
                db.move(calrun.id, CalRunState.FAILED, message="not run: " + "; ".join(blocked))
                return CalRunState.FAILED.value
        with tags(f"calib:{name}"), subflow_turns.turn():
            run = calibrate.with_options(flow_run_name=f"{name} · {title}")
            return run(request_id=request_id, calibration=name, site=site.name)
    finally:
        output_written(request_id, name).set()


def _cancelled(flow: Any, flow_run: Any, state: Any) -> None:
    """Cancelled from the Prefect UI or CLI: record it in b2cal (Prefect calls this in a
    process of its own once the flow-run process has gone)."""
    parameters = flow_run.parameters
    # Cancelled through b2cal already (which cancelled the flow run): nothing to record.
    with records(site_of(parameters.get("site"))) as (db, _), contextlib.suppress(StateConflict):
        db.cancel_request(int(parameters["request_id"]), "prefect (flow run cancelled)")


@flow(
    name="process-request",
    flow_run_name="request {request_id}",
    on_cancellation=[_cancelled],
)
def process_request(request_id: int, site: str | None = None) -> str:
    """Run a request's calibrations; returns the request's state when they have stopped."""
    log = get_run_logger()
    here = site_of(site)
    with records(here) as (db, _):
        request = db.request(request_id)
        if request.state is RequestState.CANCELLED:  # nothing is prepared for it
            raise StateConflict(request.label, request.state.value, RequestState.RUNNING.value)
        db.set_request_flow_run(request_id, str(flow_run.id or ""))
        title = request_title(request, bucket_of(db, request))
        labels = request_tags(request, bucket_of(db, request))
    with tags(*labels):
        try:
            depends = plan_task(here, request_id)
        except Exception as exc:
            with records(here) as (db, _):
                db.fail_request(request_id, f"not planned: {exc}")
            raise
        order = list(depends)  # the plan's order: dependencies first
        failures: list[str] = []
        with ThreadPoolExecutor(max_workers=len(order), thread_name_prefix="calibrate") as pool:
            futures: dict[str, Future[str]] = {
                name: pool.submit(
                    contextvars.copy_context().run,  # the subflow is the request's child
                    _run_one,
                    here,
                    request_id,
                    name,
                    depends[name],
                    title,
                )
                for name in order
            }
            try:
                for name, future in futures.items():
                    try:
                        log.info("%s: %s", name, future.result())
                    except Exception as exc:  # one calibration's failure stops no other
                        failures.append(f"{name}: {exc}")
            except BaseException:  # cancelled (SIGTERM), interrupted: stop every calibration
                stop_everything()
                raise
    with records(here) as (db, store):
        upload_approved(db, store, here, request_id)
        final = db.finish_request(request_id, "; ".join(failures) or None)
    log.info("request %d is %s", request_id, final.state.value)
    if failures:
        raise RuntimeError(f"request {request_id}: " + "; ".join(failures))
    return final.state.value
