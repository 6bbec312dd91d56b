"""``b2cal caf`` and ``b2cal calibrations``: run calibrations without Prefect, watch and inspect
their outputs, list the plugins."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from b2cal.cli.arguments import EXIT_CALIBRATION_FAILED
from b2cal.cli.signals import interruption
from b2cal.core.iov import parse_runs
from b2cal.errors import B2CalError

if TYPE_CHECKING:
    from b2cal.caf.calibration import Calibration
    from b2cal.caf.plan import CalibrationRequest
    from b2cal.caf.records import CalibrationOutcome
    from b2cal.sites import BackendSettings

log = logging.getLogger("b2cal.caf")

caf_app = typer.Typer(
    help="Run calibrations directly, without Prefect; watch and inspect their outputs.",
    no_args_is_help=True,
)
calibrations_app = typer.Typer(help="Registered calibration plugins.", no_args_is_help=True)

Json = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")]


@caf_app.command("run")
def caf_run(
    exp: Annotated[int, typer.Option(help="Experiment number.")],
    runs: Annotated[
        str, typer.Option(metavar="A-B", help="Run range A-B (inclusive) or a single run A.")
    ],
    calibrations: Annotated[
        str,
        typer.Option(
            metavar="C1,C2", help="Comma-separated calibrations (dependencies are added)."
        ),
    ],
    output: Annotated[
        Path, typer.Option(metavar="DIR", help="Output folder (rerun the same to resume).")
    ],
    storage: Annotated[
        Path | None, typer.Option(metavar="DIR", help="Storage folder holding the input files.")
    ] = None,
    files_from: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help='Instead of --storage: a JSON list of input files, {"stream": \\[paths]} or '
            "\\[paths] (each file's run and stream are read from its metadata).",
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(metavar="N", help="Local worker processes (default: number of cores)."),
    ] = None,
    backend: Annotated[
        str | None,
        typer.Option(
            metavar="NAME",
            help="Where collector jobs run: local, slurm, ... (default: the --site's, else local).",
        ),
    ] = None,
    site: Annotated[
        str | None,
        typer.Option(
            metavar="SITE",
            help="Take the backend and its limits (partition, job limit, retries, resources) "
            "from this site's file.",
        ),
    ] = None,
    open_ended: Annotated[
        bool, typer.Option("--open-ended", help="Leave the last IoV of each payload open.")
    ] = False,
    input_db: Annotated[
        list[Path] | None,
        typer.Option(
            metavar="DIR",
            help="basf2 local database to look payloads up in, after the calibrations' own "
            "(repeat; first match wins).",
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="TOML file of per-calibration overrides: max_iterations, max_files_per_job, "
            "max_jobs, \\[Cal.strategy], \\[Cal.settings] (expert settings).",
        ),
    ] = None,
    rerun: Annotated[
        str | None,
        typer.Option(
            metavar="CAL",
            help="Recompute CAL and its dependants inside the existing output (their --config "
            "sections may change); collector jobs whose spec did not change are reused.",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan and create nothing.")
    ] = False,
) -> None:
    """Run calibrations on local processes and write basf2-style output databases."""
    from b2cal.caf.calibration import AlgorithmResult
    from b2cal.caf.plan import CalibrationRequest

    first, last = parse_runs(runs)
    if workers is not None and workers < 1:
        raise B2CalError(f"--workers must be at least 1, got {workers}")
    if (storage is None) == (files_from is None):
        raise B2CalError("give exactly one of --storage DIR and --files-from FILE")
    if storage is not None and not storage.is_dir():
        raise B2CalError(f"storage folder {storage} does not exist")
    databases = _input_databases(input_db or [])
    configured, overrides, added = _calibrations(calibrations, config)
    if exp < 0:
        raise B2CalError(f"--exp must be a number >= 0, got {exp}")
    request = CalibrationRequest(
        exp=exp,
        first_run=first,
        last_run=last,
        storage=storage.resolve() if storage is not None else None,
        files_from=files_from.resolve() if files_from is not None else None,
        open_ended=open_ended,
        input_databases=databases,
    )
    if dry_run:
        _print_plan(request, configured, overrides, output, rerun, added)
        return
    if rerun is not None:
        from b2cal.caf.workspace import Workspace

        Workspace(output).run_record()  # a rerun happens inside an existing output: refused
        # before any worker process is started
    settings = _backend_settings(backend, site, workers)
    outcomes = _run(request, configured, overrides, output, settings, rerun, added)
    _print_outcomes(outcomes, output)
    if any(o.result is not AlgorithmResult.OK for o in outcomes.values()):
        raise typer.Exit(EXIT_CALIBRATION_FAILED)


def _backend_settings(name: str | None, site: str | None, workers: int | None) -> BackendSettings:
    """The backend of ``--backend`` / ``--site`` (local processes if neither is given), and
    the number of workers (also the processes that run algorithm executions)."""
    from b2cal.sites import BackendSettings, load_site

    settings = load_site(site).backend if site is not None else BackendSettings()
    update: dict[str, Any] = {}
    if name is not None:
        update["name"] = name
    if workers is not None:
        update["workers"] = workers
    elif site is None:
        update["workers"] = os.cpu_count() or 1
    return settings.model_copy(update=update)


def _input_databases(paths: list[Path]) -> tuple[Path, ...]:
    from b2cal.core.localdb import DATABASE_TXT, read_database_txt

    databases = tuple(path.resolve() for path in paths)
    for database in databases:
        if not (database / DATABASE_TXT).is_file():
            raise B2CalError(f"--input-db {database} is not a local database (no {DATABASE_TXT})")
        missing = [e.path.name for e in read_database_txt(database) if not e.path.is_file()]
        if missing:  # refused now, not in a job
            raise B2CalError(f"--input-db {database} lacks payload files: {', '.join(missing[:5])}")
    return databases


def _calibrations(
    names_option: str, config: Path | None
) -> tuple[dict[str, Calibration], dict[str, dict[str, Any]], list[str]]:
    """The named calibrations and their dependencies, with their --config sections applied,
    and the dependencies that were added (said once the run is known to go ahead: bad input
    gives nothing but its error line)."""
    from b2cal.caf.config import configured_calibrations, read_config
    from b2cal.caf.registry import available

    names = [n.strip() for n in names_option.split(",") if n.strip()]
    if not names:
        raise B2CalError("--calibrations names no calibration")
    sections = read_config(config, available()) if config is not None else {}
    return configured_calibrations(names, sections, config or "--config")


def _say_added(added: list[str]) -> None:
    from b2cal.cli.console import console

    if added:
        console.print(f"adding dependencies: {', '.join(added)}")


def _print_plan(
    request: CalibrationRequest,
    configured: dict[str, Calibration],
    overrides: dict[str, dict[str, Any]],
    output: Path,
    rerun: str | None,
    added: list[str],
) -> None:
    """The plan, and what a run on ``output`` would do with it (resume, recompute, refuse)."""
    from b2cal.caf.plan import check_plan, make_plan
    from b2cal.caf.progress import plural
    from b2cal.caf.workspace import Workspace
    from b2cal.cli.console import console, plan_tables

    plan = make_plan(request, configured, overrides)
    workspace = Workspace(output)
    if rerun is not None:
        workspace.run_record()  # a rerun happens inside an existing output
    again = check_plan(workspace, plan, [rerun] if rerun else [])  # refused: an error, exit 1
    _say_added(added)
    for table in plan_tables(plan):
        console.print(table)
    if plan.left_out:
        console.print(
            f"{plural(plan.left_out, 'listed file')} outside experiment {request.exp} runs "
            f"{request.first_run}-{request.last_run} (or of other streams) would be left out"
        )
    if again:
        state = f"exists: a run would recompute {', '.join(again)}"
    elif workspace.exists():
        state = "exists: a run would resume it"
    else:
        state = "would be created"
    console.print(f"dry run: nothing was created (output {workspace.root} {state})")


def _run(
    request: CalibrationRequest,
    configured: dict[str, Calibration],
    overrides: dict[str, dict[str, Any]],
    output: Path,
    settings: BackendSettings,
    rerun: str | None,
    added: list[str],
) -> dict[str, CalibrationOutcome]:
    from b2cal.backends.registry import open_backend
    from b2cal.caf.collection import JOB_TARGET
    from b2cal.caf.driver import run_calibrations
    from b2cal.caf.executions import AlgorithmPool
    from b2cal.caf.steps import plan
    from b2cal.caf.workspace import Workspace
    from b2cal.cli.console import console, progress_display

    workspace = Workspace(output)
    backend = open_backend(settings)
    # the algorithm's processes start now too: they import while the collection runs
    with backend, AlgorithmPool(settings.workers) as pool, workspace.run_log():
        backend.preload([JOB_TARGET])  # workers import while the plan is made
        made = plan(workspace, request, configured, overrides, rerun=[rerun] if rerun else [])
        _say_added(added)
        if made.rerun:
            console.print(f"recomputing: {', '.join(made.rerun)}")
        log.info(
            "caf run of %s (%s), experiment %d runs %d-%d, %s backend, calibration run %s",
            ", ".join(made.order),
            request.source(),
            request.exp,
            request.first_run,
            request.last_run,
            backend.name,
            workspace.run_record().calibration_run,
        )
        try:
            with progress_display(made.order) as progress:
                outcomes = run_calibrations(
                    workspace, configured, backend, progress=progress, pool=pool
                )
        except KeyboardInterrupt:
            log.warning("caf run %s; rerun the same command to resume", interruption())
            raise
        log.info(
            "caf run ended: %s",
            ", ".join(f"{name} {o.result.value}" for name, o in outcomes.items()),
        )
        return outcomes


def _print_outcomes(outcomes: dict[str, CalibrationOutcome], output: Path) -> None:
    from b2cal.caf.workspace import Workspace
    from b2cal.cli.console import console, outcome_table

    console.print(outcome_table(outcomes))
    for name, outcome in outcomes.items():
        for bad in outcome.bad_files:
            console.print(f"[yellow]bad input file[/] ({name}): {bad.path}: {bad.reason}")
    workspace = Workspace(output)
    example = workspace.calibration("<Calibration>").outputdb
    console.print(f"output databases: {example}/ (log: {workspace.log_path})")


@caf_app.command("status")
def caf_status(
    output: Annotated[Path, typer.Argument(metavar="OUTPUT", help="Output folder of caf run.")],
    as_json: Json = False,
) -> None:
    """Where each calibration of an output stands: state, iteration, jobs, last error."""
    from b2cal.caf.status import workspace_status
    from b2cal.caf.workspace import Workspace
    from b2cal.cli.console import console, status_table

    rows = workspace_status(Workspace(output))
    if as_json:
        sys.stdout.write(json.dumps([r.model_dump() for r in rows], indent=1) + "\n")
        return
    console.print(status_table(rows, f"Calibrations in {Path(output).resolve()}"))


@caf_app.command("inspect")
def caf_inspect(
    output: Annotated[Path, typer.Argument(metavar="OUTPUT", help="Output folder of caf run.")],
    calibration: Annotated[str, typer.Argument(metavar="CAL", help="Calibration name.")],
    iteration: Annotated[
        int | None,
        typer.Option(metavar="N", help="Iteration (default: the last one fully collected)."),
    ] = None,
    run: Annotated[
        int | None, typer.Option(metavar="R", help="Only this run (default: all runs).")
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option(metavar="FILE.png", help="Also plot histograms and columns to this PNG."),
    ] = None,
) -> None:
    """The merged collector output an algorithm saw, summarised (and plotted)."""
    from rich.table import Table

    from b2cal.caf.inspection import check_plot_path, merged_output, summarise
    from b2cal.caf.inspection import plot as plot_to
    from b2cal.caf.workspace import Workspace
    from b2cal.cli.console import console
    from b2cal.core.iov import run_ranges

    if plot is not None:
        check_plot_path(plot)
    inspected = merged_output(Workspace(output), calibration, iteration, run)
    title = (
        f"{inspected.calibration} iteration {inspected.iteration}: merged collector output of "
        f"runs {run_ranges(r.run for r in inspected.runs)}"
    )
    table = Table(title=title)
    for column in ("key", "kind", "summary"):
        table.add_column(column, overflow="fold")
    for row in summarise(inspected.data):
        table.add_row(row.key, row.kind, row.summary)
    console.print(table)
    if plot is not None:
        count = plot_to(inspected, plot)
        if count:
            console.print(f"{count} plots written to {plot}")
        else:
            console.print("nothing to plot: no 1-D or 2-D histogram and no column")


@calibrations_app.command("list")
def calibrations_list() -> None:
    """List the calibrations registered in the b2cal.calibrations entry points."""
    from b2cal.caf.registry import available, load
    from b2cal.cli.console import calibrations_table, console

    console.print(calibrations_table([load(name) for name in available()]))
