"""``calibrate``: one calibration of one request, from plan to sign-off (and upload if the
site's policy approves it automatically).

plan → wait for the dependencies → per iteration: collect (one task per batch of collector
jobs) → algorithm → … → finish → validate → sign-off. The engine's steps do the work and record
it in the site's workspace of the request, so a retried flow run walks over what is done
(finished collector jobs, iterations and uploads are never repeated). Inside ``process-request``
it starts with its request and waits for the ``outputdb`` of the dependencies that run in the
same process; as a deployment run (a calibration placed at another site) its dependencies are
uploaded already, and those computed elsewhere are read from the staging tag. Waiting for an
expert holds nothing: the flow run ends with the calibration run AWAITING_SIGNOFF, and the
``sign-off`` flow uploads once someone decides.
"""

from __future__ import annotations

import contextvars
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE
from prefect.concurrency.sync import concurrency
from prefect.events import emit_event
from prefect.runtime import flow_run

from b2cal.caf.calibration import AlgorithmResult
from b2cal.caf.lifecycle import drive
from b2cal.caf.records import CalibrationOutcome
from b2cal.caf.steps import (
    collect,
    driving,
    finish,
    load_calibration,
    prepare_collection,
    run_algorithm,
)
from b2cal.cdb.store import ConditionsStore
from b2cal.db.database import StateDatabase
from b2cal.db.model import Request
from b2cal.db.states import CalRunState
from b2cal.errors import B2CalError, CollectionFailed, Interrupted
from b2cal.orchestrator.registration import SIGNOFF_EVENT, job_limit_name
from b2cal.processing.area import RequestArea
from b2cal.processing.jobs import cancel_left_jobs, mark_failed_inputs
from b2cal.processing.lifecycle import (
    Resume,
    approved_by_the_site,
    cancelled,
    failed,
    not_run,
    on_start,
    outcome_recorded,
    step_started,
    taken_up,
    validated,
    waits_for_a_person,
)
from b2cal.processing.preparation import (
    calibrations_of,
    fetch_upstream,
    planned_attempt,
    prepare,
)
from b2cal.processing.validation import validate_output
from b2cal.requests.deferred import advance, upload_and_advance
from b2cal.requests.healing import record_process
from b2cal.sites import Site
from flows.artifacts import publish_validation
from flows.common import (
    algorithm_pool,
    awaited_here,
    output_written,
    records,
    site_backend,
    site_of,
    stopping,
    subflow_turns,
)


@task(name="collect", cache_policy=NONE)
def collect_task(
    site: Site, request_id: int, calibration: str, iteration: int, jobs: list[int]
) -> None:
    """One batch of an iteration's collector jobs on the site's backend; under the site's job
    limit it holds a slot of ``site:<name>`` per job until the batch ends."""
    workspace = RequestArea(site.request_folder(request_id)).workspace
    calibration_ = load_calibration(workspace, calibration)
    backend = site_backend(site)
    if site.backend.job_limit is None:
        collect(workspace, calibration_, iteration, backend, jobs=jobs, stop=stopping)
        return
    with concurrency(job_limit_name(site), occupy=len(jobs), strict=True):
        collect(workspace, calibration_, iteration, backend, jobs=jobs, stop=stopping)


@task(
    name="algorithm",
    cache_policy=NONE,
    task_run_name="algorithm · {calibration} · iter {iteration}",
)
def algorithm_task(site: Site, request_id: int, calibration: str, iteration: int) -> str:
    """The iteration's algorithm executions in the process's pool (side by side where the
    strategy allows), so a long fit never holds up another calibration's steps here."""
    workspace = RequestArea(site.request_folder(request_id)).workspace
    result = run_algorithm(
        workspace,
        load_calibration(workspace, calibration),
        iteration,
        pool=algorithm_pool(site),
        stop=stopping,
    )
    return result.result.value


@task(name="finish", cache_policy=NONE, task_run_name="finish · {calibration}")
def finish_task(site: Site, request_id: int, calibration: str) -> CalibrationOutcome:
    """The final output; dependants waiting in this process are woken the moment it exists
    (not when this task's end has been recorded)."""
    workspace = RequestArea(site.request_folder(request_id)).workspace
    outcome = finish(workspace, load_calibration(workspace, calibration))
    if outcome.result is AlgorithmResult.OK:  # else after its state says so: "not run: ..."
        output_written(request_id, calibration).set()
    return outcome


@task(name="validate", cache_policy=NONE, task_run_name="validate · {calibration}")
def validate_task(
    site: Site, request_id: int, calibration: str, reference: str, named: bool
) -> dict[str, Any]:
    area = RequestArea(site.request_folder(request_id))
    units = load_calibration(area.workspace, calibration).units
    with records(site) as (_, store):
        validation = validate_output(
            calibration,
            area.workspace.calibration(calibration).outputdb,
            area.validation(calibration),
            store,
            reference,
            reference_required=named,
            units=units,
        )
    publish_validation(site, request_id, validation)
    return validation.model_dump()


def _collect(site: Site, db: StateDatabase, request_id: int, name: str, iteration: int) -> None:
    """An iteration's collection: its jobs written, then one ``collect`` task per batch of
    ``batch_size`` jobs, ``batches_in_flight`` of them at a time. A batch that fails lets the
    running ones end, submits no more, and fails the collection (the jobs' states are in their
    folders in the workspace, where ``b2cal jobs`` and the dashboard read them)."""
    workspace = RequestArea(site.request_folder(request_id)).workspace
    todo = prepare_collection(workspace, load_calibration(workspace, name), iteration)
    size = min(site.backend.batch_size, site.backend.job_limit or site.backend.batch_size)
    batches = [todo[start : start + size] for start in range(0, len(todo), size)]
    failure: BaseException | None = None
    with ThreadPoolExecutor(site.backend.batches_in_flight, thread_name_prefix="batch") as pool:
        running: set[Future[None]] = set()

        def settle(done: set[Future[None]]) -> None:
            nonlocal failure
            for future in done:
                running.discard(future)
                if future.exception() is not None and failure is None:
                    failure = future.exception()

        for batch in batches:
            while len(running) >= site.backend.batches_in_flight:
                settle(wait(running, return_when=FIRST_COMPLETED).done)
            if failure is not None or stopping.is_set():
                break
            label = f"collect · {name} · iter {iteration} · jobs {batch[0]}-{batch[-1]}"
            run = collect_task.with_options(task_run_name=label)
            running.add(
                pool.submit(  # the task runs as the flow's child, holding its locks
                    contextvars.copy_context().run, run, site, request_id, name, iteration, batch
                )
            )
        settle(wait(running).done)
    if failure is not None:
        if isinstance(failure, CollectionFailed):  # an input that breaks the collector
            for path in mark_failed_inputs(db, site.name, workspace, name, iteration):
                get_run_logger().warning("%s: input file %s marked bad", name, path)
        raise failure
    if stopping.is_set():
        raise Interrupted(f"{name}: iteration {iteration} before all its batches were submitted")


class _AsTasks:
    """The calibration's steps as this flow's tasks: a collection in batches, the algorithm,
    the final output (whose dependants here are woken when it exists)."""

    def __init__(self, site: Site, db: StateDatabase, request_id: int, name: str) -> None:
        self.site, self.db, self.request_id, self.name = site, db, request_id, name

    def collect(self, iteration: int) -> None:
        _collect(self.site, self.db, self.request_id, self.name, iteration)

    def algorithm(self, iteration: int) -> None:
        algorithm_task(self.site, self.request_id, self.name, iteration)

    def finish(self) -> CalibrationOutcome:
        return finish_task(self.site, self.request_id, self.name)


def _iterate(
    site: Site, db: StateDatabase, calrun_id: int, request_id: int, name: str
) -> CalibrationOutcome:
    """The calibration's steps, as every driver takes them (:func:`b2cal.caf.lifecycle.drive`),
    the calibration run's state moved with each."""
    workspace = RequestArea(site.request_folder(request_id)).workspace
    calibration = load_calibration(workspace, name)
    return drive(
        workspace.calibration(name),
        calibration.max_iterations,
        _AsTasks(site, db, request_id, name),
        stop=stopping,
        on_step=lambda step: step_started(db, calrun_id, step),
    )


def _wait_for(request_id: int, dependencies: list[str]) -> None:
    """Until the dependencies running in this process have written their ``outputdb``."""
    for dep in dependencies:
        while not output_written(request_id, dep).wait(timeout=1.0):
            if stopping.is_set():
                break
        if stopping.is_set():
            raise Interrupted(f"while waiting for the payloads of {dep}")


def _cancelled(flow: Any, flow_run: Any, state: Any) -> None:
    """A ``calibrate`` run cancelled on its own (a deployment run, or a subflow whose request
    was cancelled): its calibration run is CANCELLED unless it has ended already."""
    parameters = flow_run.parameters
    here = site_of(parameters.get("site"))
    request_id, calibration = int(parameters["request_id"]), parameters["calibration"]
    with records(here) as (db, _):
        cancelled(db, db.calibration_run_of(request_id, calibration).id, "flow run cancelled")
    # batch jobs outlive the process that was stopped: remove them on purpose
    workspace = RequestArea(here.request_folder(request_id)).workspace
    cancel_left_jobs(here.backend, workspace, calibration)


@flow(
    name="calibrate",
    flow_run_name="{calibration} · request {request_id}",
    on_cancellation=[_cancelled],
)
def calibrate(request_id: int, calibration: str, site: str | None = None) -> str:
    """Run one calibration of a request to sign-off; returns its calibration-run state."""
    subflow_turns.begun()
    log = get_run_logger()
    here = site_of(site)
    ready = output_written(request_id, calibration)
    if not awaited_here(request_id, [calibration]):  # a deployment run of its own: watched
        record_process(RequestArea(here.request_folder(request_id)), str(flow_run.id or ""))
    try:
        algorithm_pool(here)  # its workers start now and import while the collection runs
        with records(here) as (db, store):
            request = db.request(request_id)
            calrun = db.calibration_run_of(request_id, calibration)
            todo = on_start(calrun)
            if todo is Resume.UPLOAD:  # crashed before its upload
                upload_and_advance(db, store, here, request_id)
                return db.calibration_run(calrun.id).state.value
            if todo is Resume.SIGNOFF:  # crashed before its sign-off?
                return _sign_off(here, db, store, calrun.id, request_id, calibration)
            if todo is Resume.NOTHING:
                log.info("%s is %s: nothing to do", calrun.label, calrun.state.value)
                return calrun.state.value
            if calrun.state is CalRunState.FAILED:  # a retried flow run tries it again
                log.info("%s failed before: trying again", calrun.label)
            if planned_attempt(here, request_id, calibration) != calrun.attempt:
                prepare(db, store, here, request)  # on its own, or a new attempt
            depends = calibrations_of(request)[0][calibration].depends_on
            waiting = awaited_here(request_id, depends)
            taken_up(db, calrun.id, str(flow_run.id or ""), waiting)
            workspace = RequestArea(here.request_folder(request_id)).workspace
            try:
                _wait_for(request_id, waiting)
                if not_run(db, calrun, depends):
                    return CalRunState.FAILED.value
                fetched = fetch_upstream(db, store, here, request, calibration)
                if fetched:
                    log.info("payloads of %s read from %s", ", ".join(fetched), request.staging_tag)
                with driving(workspace, calibration):
                    outcome = _iterate(here, db, calrun.id, request_id, calibration)
            except Exception as exc:  # collector jobs that keep failing, a bug: FAILED
                area = None if stopping.is_set() else workspace.calibration(calibration)
                failed(db, calrun.id, exc, area)
                raise
            finally:
                ready.set()
            ended = outcome_recorded(db, calrun.id, outcome)
            if ended.state is CalRunState.FAILED:
                raise B2CalError(f"{calibration} ended {outcome.result.value}: {outcome.message}")
            if ended.state is not CalRunState.VALIDATING:
                return ended.state.value
            return _validate_and_sign_off(here, db, store, request, calrun.id, calibration)
    finally:
        ready.set()
        if not stopping.is_set():
            _advance(request_id, here)


def _validate_and_sign_off(
    here: Site,
    db: StateDatabase,
    store: ConditionsStore,
    request: Request,
    calrun_id: int,
    calibration: str,
) -> str:
    reference = request.reference_tag or here.running_tag
    validation = validate_task(
        here, request.id, calibration, reference, request.reference_tag is not None
    )
    validated(db, calrun_id, validation)
    return _sign_off(here, db, store, calrun_id, request.id, calibration)


def _advance(request_id: int, here: Site) -> None:
    """Start what this calibration's end made ready elsewhere (or fail what it left without
    payloads); a failure to do so is said, not raised: the next upload tries again."""
    try:
        with records(here) as (db, _):
            advance(db, request_id)
    except Exception as exc:
        get_run_logger().warning("deferred calibrations of request %d: %s", request_id, exc)


def _sign_off(
    here: Site,
    db: StateDatabase,
    store: ConditionsStore,
    calrun_id: int,
    request_id: int,
    calibration: str,
) -> str:
    """Approve and upload at once where the site's policy and a passing validation allow it;
    otherwise say that the calibration waits (the webhook hears of it) and end: waiting for a
    person holds nothing. Also what a retried run does with one that waits."""
    log = get_run_logger()
    calrun = db.calibration_run(calrun_id)
    why = waits_for_a_person(here, calibration, calrun.summary)
    if why is None:
        approved_by_the_site(db, calrun_id)
        upload_and_advance(db, store, here, request_id)
        return db.calibration_run(calrun_id).state.value
    emit_event(
        event=SIGNOFF_EVENT,
        resource={
            "prefect.resource.id": f"b2cal.calibration-run.{calrun_id}",
            "prefect.resource.name": f"{calibration} of request {request_id}",
        },
        payload={
            "calibration": calibration,
            "request": request_id,
            "calibration_run": calrun_id,
            "why": why,
            "command": f"b2cal signoff {calrun_id} approve|reject",
        },
    )
    log.info("%s awaits a sign-off (%s)", calrun.label, why)
    return calrun.state.value
