"""``process-request``: every calibration of a request that runs at the request's site, in
dependency order, independent ones at the same time; the others are started where they run.

Each calibration that runs here (its dependencies all run here, or are skipped) is an
in-process ``calibrate`` subflow. All of them start at once, each waiting inside for the
``outputdb`` of its dependencies here, so a dependant's first collector job follows its
dependency's payloads within a moment (not the end of its flow run: validation and sign-off of
a dependency do not hold its dependants back). A dependency that ended without payloads
(FAILED, NOT_ENOUGH_DATA) leaves its dependants FAILED, saying why. Calibrations placed at
another site, or downstream of one, are deferred: started as ``calibrate`` deployment runs on
their sites' pools when what they need is uploaded (:mod:`b2cal.requests.deferred`).
"""

from __future__ import annotations

import contextlib
import contextvars
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from prefect import flow, get_run_logger, tags, task
from prefect.cache_policies import NONE
from prefect.client.schemas.objects import State
from prefect.runtime import flow_run

from b2cal.errors import B2CalError, StateConflict
from b2cal.processing.area import RequestArea
from b2cal.processing.jobs import cancel_left_jobs
from b2cal.requests import run as request_run
from b2cal.requests.healing import record_process
from b2cal.requests.run import Planned
from b2cal.sites import Site
from flows.artifacts import summarise_request
from flows.calibrate import calibrate
from flows.common import (
    NOT_INPUT,
    name_and_tag,
    output_written,
    pool_site,
    records,
    refused,
    run_here,
    site_of,
    start_backend,
    stop_everything,
    stopping,
    subflow_turns,
)


@task(name="plan", cache_policy=NONE, task_run_name="plan · request {request_id}")
def plan_task(site: Site, request_id: int) -> Planned:
    """What this site computes of the request, planned (:func:`request_run.plan`)."""
    with records(site) as (db, store):
        return request_run.plan(db, store, site, request_id)


def _run_one(site: Site, request_id: int, name: str, title: str) -> str:
    """Run the calibration as a subflow (it waits for its dependencies inside); whatever
    happens, its own output event is set at the end, so its dependants never wait forever."""
    try:
        if stopping.is_set():
            return "stopped"
        with tags(f"calib:{name}"), subflow_turns.turn():
            run = calibrate.with_options(flow_run_name=f"{name} · {title}")
            return run(request_id=request_id, calibration=name, site=site.name)
    finally:
        output_written(request_id, name).set()


def cancelled(flow: Any, flow_run: Any, state: Any) -> None:
    """Cancelled from the Prefect UI or CLI: record it in b2cal (Prefect calls this in a
    process of its own once the flow-run process has gone). The request is the run's
    ``request_id``, or the one the run made (``calibration-request``)."""
    parameters = flow_run.parameters
    here = site_of(parameters.get("site"))
    with records(here) as (db, _):
        if parameters.get("request_id") is not None:
            request_id = int(parameters["request_id"])
        else:
            made = db.request_of_flow_run(str(flow_run.id))
            if made is None:
                return  # cancelled before it made its request: nothing to record
            request_id = made.id
        # Cancelled through b2cal already (which cancelled the flow run): nothing to record.
        with contextlib.suppress(StateConflict):
            db.cancel_request(request_id, "prefect (flow run cancelled)")
    # batch jobs outlive the process that was stopped: remove them on purpose
    area = RequestArea(here.request_folder(request_id))
    if area.workspace.exists():
        for calibration in area.workspace.run_record().calibrations:
            cancel_left_jobs(here.backend, area.workspace, calibration)


@flow(
    name="process-request",
    flow_run_name="request {request_id}",
    on_cancellation=[cancelled],
)
def process_request(request_id: int, site: str | None = None) -> str | State[Any]:
    """Run (or run again) an existing request's calibrations at its site; returns the
    request's state when they have stopped.

    Args:
        request_id: The request, as `b2cal request create --no-start` made it.
        site: The site of this deployment's pool (set by the deployment).
    """
    try:
        here = pool_site(site)
        with records(here) as (db, _):
            request = db.request(request_id)  # a missing one is refused in one line
        if request.site != here.name:
            raise B2CalError(
                f"{request.label} is a request of site {request.site}: run "
                f"process-request/{request.site}"
            )
    except NOT_INPUT:
        raise
    except B2CalError as exc:
        return refused(str(exc))
    return process(here, request_id)


def process(here: Site, request_id: int) -> str:
    """The body of a request's flow run (``process-request``, ``calibration-request``)."""
    log = get_run_logger()
    with records(here) as (db, _):
        begun = request_run.begin(db, request_id, str(flow_run.id or ""))
    record_process(RequestArea(here.request_folder(request_id)), str(flow_run.id or ""))
    title = begun.title
    name_and_tag(f"request {request_id}", begun.tags)
    start_backend(here)
    planned = plan_task(here, request_id)  # without the tags: see untagged_tasks
    for started in planned.started:
        log.info("started %s", started)
    order = planned.here  # dependencies first
    run_here(request_id, order)
    failures: list[str] = []
    with tags(*begun.tags):  # the calibrations' flow runs carry the request's tags
        if order:
            with ThreadPoolExecutor(len(order), thread_name_prefix="calibrate") as pool:
                futures: dict[str, Future[str]] = {
                    name: pool.submit(
                        contextvars.copy_context().run,  # the subflow is the request's child
                        _run_one,
                        here,
                        request_id,
                        name,
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
                except BaseException:  # cancelled (SIGTERM), interrupted: stop every one
                    stop_everything()
                    raise
    with records(here) as (db, store):
        final = request_run.end(db, store, here, request_id, failures)
    log.info("request %d is %s", request_id, final.state.value)
    summarise_request(here, request_id)
    if failures:
        raise RuntimeError(f"request {request_id}: " + "; ".join(failures))
    return final.state.value
