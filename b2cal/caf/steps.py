"""The engine's steps: plan, collect, run_algorithm, finish.

Each step is a function of the workspace, idempotent, and holds the calibration's lock while it
works: a step that finished before returns what it recorded, a step killed half-way is done
again from what was recorded. So any step may run in another process, after a crash, as a
Prefect task — ``caf run`` (:mod:`b2cal.caf.driver`) and the flows call the same functions:

* :func:`plan`: calibrations in dependency order, input files listed once, collector jobs per
  calibration, recorded in the workspace (:mod:`b2cal.caf.plan`);
* :func:`collect`: one iteration's collector jobs on a backend — all at once, or in batches
  after :func:`prepare_collection` has written them (a flow runs each batch as a task);
* :func:`run_algorithm`: merge, strategy, algorithm for one iteration; its result says whether
  the calibration asks to iterate;
* :func:`finish`: final output, provenance and validation of a calibration.

A driver that runs steps in several threads at once holds the calibration with
:func:`driving`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path

from b2cal.backends.base import Backend
from b2cal.caf.calibration import AlgorithmResult, Calibration, PayloadDoc
from b2cal.caf.chain import PayloadChain, chain_links
from b2cal.caf.config import Overrides, configure
from b2cal.caf.executions import AlgorithmPool
from b2cal.caf.jobs import collected_jobs, job_specs, merge_job_outputs, prepare_jobs, run_jobs
from b2cal.caf.lifecycle import iterations_run
from b2cal.caf.locks import one_holder
from b2cal.caf.outputs import inputs_digest, validate, write_final_output
from b2cal.caf.plan import CalibrationRequest, Plan, fingerprint, make_plan, record_plan
from b2cal.caf.progress import NoProgress, Progress, plural
from b2cal.caf.records import CalibrationOutcome, CalibrationRecord, IterationResult, PayloadRef
from b2cal.caf.registry import load
from b2cal.caf.strategies import run_strategy
from b2cal.caf.workspace import CalibrationArea, JobArea, Workspace
from b2cal.core.iov import IoV, run_ranges
from b2cal.core.localdb import DATABASE_TXT, LocalDatabase, write_local_database
from b2cal.errors import B2CalError

log = logging.getLogger("b2cal.caf")


def plan(
    workspace: Workspace,
    request: CalibrationRequest,
    calibrations: Mapping[str, Calibration],
    overrides: Overrides | None = None,
    rerun: Collection[str] = (),
    elsewhere: Mapping[str, Path | None] | None = None,
) -> Plan:
    """Plan the run and record the plan in the workspace (or check it against the recorded
    one); ``rerun`` names calibrations whose results (and their dependants') are forgotten,
    to be computed again (``Plan.rerun`` says which); ``elsewhere`` names calibrations this
    workspace does not compute, and where their payloads are (None: skipped), as for
    :func:`b2cal.caf.plan.make_plan`."""
    result = make_plan(request, calibrations, overrides, elsewhere)
    result.rerun = record_plan(workspace, result, rerun)
    if result.left_out:
        log.warning(
            "%s of --files-from outside experiment %d runs %d-%d (or of other streams): left out",
            plural(result.left_out, "listed file"),
            request.exp,
            request.first_run,
            request.last_run,
        )
    for name in result.order:
        missing = result.calibrations[name].runs_without_files
        if missing:
            log.warning("%s: no input files for requested runs %s", name, run_ranges(missing))
    return result


@contextlib.contextmanager
def driving(workspace: Workspace, name: str) -> Iterator[None]:
    """Hold calibration ``name`` for a driver whose steps run in several threads of this
    process (a Prefect flow whose tasks run collection batches side by side): those threads
    started with a copy of this context act as the driver; another process or thread asking
    for the calibration is refused (CalibrationBusy) until the driver lets go."""
    with one_holder(), workspace.calibration(name).lock():
        yield


def load_calibration(workspace: Workspace, name: str) -> Calibration:
    """The calibration ``name`` as planned in ``workspace``: the registered plugin with its
    recorded ``--config`` section applied (what a step in another process runs)."""
    section = workspace.calibration(name).record().config
    calibration = load(name)
    return configure(calibration, section, workspace.root) if section else calibration


def _planned(workspace: Workspace, calibration: Calibration) -> CalibrationRecord:
    """The calibration's record, if ``calibration`` is the one planned (else B2CalError: a
    step must never compute with other settings than those the output records)."""
    record = workspace.calibration(calibration.name).record()
    now = fingerprint(calibration)
    if now != record.effective:
        keys = ", ".join(k for k in now if record.effective.get(k) != now[k])
        raise B2CalError(
            f"{calibration.name} is not the calibration planned in {workspace.root} ({keys} "
            "differ): run the steps with load_calibration(), or plan again with a rerun"
        )
    return record


def chain_directories(
    workspace: Workspace, area: CalibrationArea, record: CalibrationRecord, iteration: int
) -> list[Path]:
    """The database chain of an iteration: the previous iteration's payloads, the
    dependencies' outputs (nearest first; those computed elsewhere where their payloads were
    put, skipped ones left out), the request's input databases."""
    previous = [area.iteration(iteration - 1).localdb] if iteration > 0 else []
    dependencies = [
        record.elsewhere[dep] if dep in record.elsewhere else workspace.calibration(dep).outputdb
        for dep in record.upstream
    ]
    links = [d for d in dependencies if d is not None]
    return [*previous, *links, *record.input_databases]


def prepare_collection(workspace: Workspace, calibration: Calibration, iteration: int) -> list[int]:
    """Write the collector jobs of ``iteration`` (keeping those whose spec is unchanged) and
    return the numbers of those not finished: what :func:`collect` is then given, in batches,
    by a driver that runs batches as separate tasks. Nothing once the iteration has a
    result."""
    area = workspace.calibration(calibration.name)
    with area.lock():
        if area.iteration(iteration).result() is not None:
            return []
        jobs = _write_jobs(workspace, area, calibration, iteration)
        return [job.index for job in jobs if not job.done]


def _write_jobs(
    workspace: Workspace, area: CalibrationArea, calibration: Calibration, iteration: int
) -> list[JobArea]:
    record = _planned(workspace, calibration)
    _check_ready(workspace, area, record, iteration)
    chain = chain_links(chain_directories(workspace, area, record, iteration))
    jobs = prepare_jobs(area.iteration(iteration), calibration, record, chain)
    done = sum(1 for job in jobs if job.done)
    kept = f", {done} done before" if done else ""
    count = plural(len(jobs), "job")
    log.info("%s: iteration %d: collecting, %s%s", area.name, iteration, count, kept)
    return jobs


def _prepared_jobs(
    workspace: Workspace,
    area: CalibrationArea,
    calibration: Calibration,
    iteration: int,
    numbers: Collection[int],
) -> list[JobArea]:
    """Jobs ``numbers`` of the iteration, if they are written as they must be now."""
    record = _planned(workspace, calibration)
    current = area.iteration(iteration)
    chain = chain_links(chain_directories(workspace, area, record, iteration))
    specs = job_specs(current, calibration, record, chain)
    jobs = {job.index: job for job in current.jobs()}
    stale = sorted(
        n for n in numbers if n not in jobs or n >= len(specs) or jobs[n].spec() != specs[n]
    )
    if stale:
        raise B2CalError(
            f"{area.name} iteration {iteration}: collector jobs {stale} are not prepared as "
            "planned now: prepare the collection first"
        )
    return [jobs[n] for n in sorted(numbers)]


def collect(
    workspace: Workspace,
    calibration: Calibration,
    iteration: int,
    backend: Backend,
    *,
    jobs: Collection[int] | None = None,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Run the collector jobs of ``iteration`` that have not finished on ``backend``.

    Nothing to do once the iteration has a result. Collector jobs whose spec is unchanged
    keep their output. With ``jobs`` (numbers from :func:`prepare_collection`), only those
    run: one batch of the collection. Raises CollectionFailed if jobs still fail after the
    backend's retries, Interrupted when ``stop`` is set.
    """
    shown = progress or NoProgress()
    name = calibration.name
    area = workspace.calibration(name)
    with area.lock():
        if area.iteration(iteration).result() is not None:
            return
        if jobs is None:
            selected = _write_jobs(workspace, area, calibration, iteration)
        else:
            selected = _prepared_jobs(workspace, area, calibration, iteration, jobs)
        done = sum(1 for job in selected if job.done)
        kept = f", {done} done before" if done else ""
        what = plural(len(selected), "job") + kept
        shown.stage(name, f"iteration {iteration}: collecting ({what})")
        resources = backend.resources.merged(calibration.backend_args, f"calibration {name}")
        run_jobs(
            name,
            iteration,
            selected,
            backend,
            lambda d, t: shown.jobs(name, d, t),
            stop=stop,
            resources=resources,
        )


def _check_ready(
    workspace: Workspace, area: CalibrationArea, record: CalibrationRecord, iteration: int
) -> None:
    for dep in record.upstream:
        if dep in record.elsewhere:
            source = record.elsewhere[dep]
            if source is not None and not (source / DATABASE_TXT).is_file():
                raise B2CalError(
                    f"{area.name} needs the payloads of {dep} (computed elsewhere) in "
                    f"{source}, which holds no database yet"
                )
            continue
        outcome = workspace.calibration(dep).outcome()
        if outcome is None or outcome.result is not AlgorithmResult.OK:
            state = outcome.result.value if outcome else "not finished"
            raise B2CalError(f"{area.name} needs the payloads of {dep}, which is {state}")
    if iteration > 0:
        previous = area.iteration(iteration - 1).result()
        if previous is None or previous.result is not AlgorithmResult.ITERATE:
            raise B2CalError(
                f"{area.name} iteration {iteration} cannot start: iteration {iteration - 1} "
                "has not asked to iterate"
            )


def run_algorithm(
    workspace: Workspace,
    calibration: Calibration,
    iteration: int,
    *,
    progress: Progress | None = None,
    pool: AlgorithmPool | None = None,
    stop: threading.Event | None = None,
) -> IterationResult:
    """Merge the iteration's collector output, run the strategy and the algorithm, keep the
    payloads (the iteration's ``localdb``) and the result; or return the recorded result.

    With ``pool`` (what drivers give) the executions run in its processes, the independent
    ones side by side (:mod:`b2cal.caf.executions`); without, one after the other in this
    thread. ``stop`` interrupts executions in a pool (Interrupted)."""
    shown = progress or NoProgress()
    name = calibration.name
    area = workspace.calibration(name)
    with area.lock():
        current = area.iteration(iteration)
        done = current.result()
        if done is not None:
            return done
        record = _planned(workspace, calibration)
        run = workspace.run_record()
        directories = chain_directories(workspace, area, record, iteration)
        specs = job_specs(current, calibration, record, chain_links(directories))
        jobs = collected_jobs(current, specs)
        shown.stage(name, f"iteration {iteration}: merging and running the algorithm")
        start = time.perf_counter()
        per_run = merge_job_outputs(jobs)
        merged = time.perf_counter()
        statuses = [job.status() for job in jobs]
        chain = PayloadChain(directories)
        runner = None
        if pool is not None:
            runner = pool.runner(
                current.algorithm,
                calibration.algorithm,
                calibration.settings,
                {exprun: data for exprun, data in per_run.items() if exprun in run.requested},
                iteration=iteration,
                chain=directories,
                stop=stop,
            )
        outcome = run_strategy(
            calibration.strategy,
            calibration.algorithm,
            per_run,
            run.requested,
            iteration=iteration,
            lookup=chain.lookup,
            open_ended=run.open_ended,
            settings=calibration.settings,
            runner=runner,
        )
        computed = time.perf_counter()
        write_local_database(current.localdb, outcome.payloads)
        result = IterationResult(
            iteration=iteration,
            result=outcome.result,
            message=outcome.message,
            payloads=[PayloadRef(name=n, iov=iov) for n, iov, _ in outcome.payloads],
            executions=[record.summary() for record in outcome.records],
            discarded=[record.summary() for record in outcome.discarded],
            events=sum(s.events for s in statuses if s is not None),
            jobs=len(jobs),
            bad_files=[b for s in statuses if s is not None for b in s.bad_files],
            merge_seconds=round(merged - start, 3),
            algorithm_seconds=round(computed - merged, 3),
        )
        current.write_result(result)
        current.algorithm.forget_runs()
    for bad in result.bad_files:
        log.warning("%s: bad input file %s: %s", name, bad.path, bad.reason)
    iovs = sorted({p.iov for p in result.payloads}, key=lambda iov: iov.first)
    log.info(
        "%s: iteration %d: %s%s%s",
        name,
        iteration,
        result.result.value,
        f" ({result.message})" if result.message else "",
        f"; payload IoVs {'; '.join(str(iov) for iov in iovs)}" if iovs else "",
    )
    return result


def finish(
    workspace: Workspace, calibration: Calibration, *, progress: Progress | None = None
) -> CalibrationOutcome:
    """End the calibration from its last iteration: the outcome and, if it is OK, the final
    output database, provenance and validation; or return the recorded outcome."""
    shown = progress or NoProgress()
    name = calibration.name
    area = workspace.calibration(name)
    with area.lock():
        done = area.outcome()
        if done is not None and done.finished:
            return done
        record = _planned(workspace, calibration)
        results = _iteration_results(area, calibration.max_iterations)
        final = results[-1]
        area.remove_iterations_from(len(results))  # left from an earlier, longer computation
        code, message = final.result, final.message
        # As the CAF does: at the limit the last payloads are kept, and whether the limit was
        # hit without convergence is recorded, whatever max_iterations is.
        converged = None
        if code is AlgorithmResult.ITERATE:
            code, converged = AlgorithmResult.OK, False
            message = (
                f"not converged after {len(results)} iterations (max_iterations); "
                "last payloads kept"
            )
        elif calibration.max_iterations > 1:
            converged = code is AlgorithmResult.OK
        if code is AlgorithmResult.OK and not final.payloads:
            code, message = AlgorithmResult.FAILURE, "the algorithm ended OK without any payload"
        outcome = CalibrationOutcome(
            calibration=name,
            result=code,
            iterations=len(results),
            message=message,
            converged=converged,
            events=final.events,
            jobs=final.jobs,
            bad_files=final.bad_files,
            runs_without_files=record.runs_without_files,
        )
        if code is AlgorithmResult.OK:
            shown.stage(name, "writing output and validating")
            payloads = _payloads(area, final.iteration)
            bad = {b.path for b in final.bad_files}
            chain = PayloadChain(chain_directories(workspace, area, record, 0))
            write_final_output(
                area,
                payloads,
                calibration_run=workspace.run_record().calibration_run,
                iteration=final.iteration,
                digest=inputs_digest([s for s in record.stamps if s.path not in bad]),
                upstream=chain.entries(),
            )
            outcome.iovs = sorted({iov for _, iov, _ in payloads}, key=lambda i: i.first)
            outcome.validation = validate(calibration.validation, payloads)
        area.write_outcome(outcome)
    return outcome


def _iteration_results(area: CalibrationArea, max_iterations: int) -> list[IterationResult]:
    """The results of the iterations run, up to the first that does not ask to iterate."""
    results = iterations_run(area, max_iterations)
    if results and results[-1].result is not AlgorithmResult.ITERATE:
        return results
    if not results:
        raise B2CalError(f"{area.name} has no finished iteration: collect and run it first")
    if len(results) < max_iterations:
        raise B2CalError(
            f"{area.name} asked to iterate: run iteration {len(results)} before finishing"
        )
    return results


def _payloads(area: CalibrationArea, iteration: int) -> list[tuple[str, IoV, PayloadDoc]]:
    database = LocalDatabase(area.iteration(iteration).localdb)
    return [(e.name, e.iov, e.read()) for e in database.entries]
