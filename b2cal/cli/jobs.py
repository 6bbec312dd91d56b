"""``b2cal jobs``: the collector jobs of a calibration — in a ``caf run`` output or of a
calibration run of a request — listed, shown with their log tails, resubmitted, cancelled."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from b2cal.cli.arguments import parse_int_list
from b2cal.cli.sites import SiteOption, open_site, state_db
from b2cal.errors import B2CalError

jobs_app = typer.Typer(
    help="Collector jobs of a calibration: list, show, logs, resubmit, cancel.",
    no_args_is_help=True,
)

Output = Annotated[
    Path | None, typer.Option(metavar="DIR", help="A caf run output folder (with --calibration).")
]
CalibrationName = Annotated[
    str | None, typer.Option(metavar="CAL", help="The calibration in --output.")
]
CalRun = Annotated[
    int | None,
    typer.Option(metavar="ID", help="Instead of --output: a calibration run of a request."),
]
Iteration = Annotated[
    int | None, typer.Option(metavar="N", help="Iteration (from 0; default: the latest).")
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")]


def _target(
    output: Path | None, calibration: str | None, calrun: int | None, site: str | None
) -> tuple[Path, list[str]]:
    """The workspace folder and the calibrations meant."""
    from b2cal.caf.workspace import Workspace
    from b2cal.sites import load_site

    if (output is None) == (calrun is None):
        raise B2CalError("give exactly one of --output DIR and --calrun ID")
    if output is not None:
        workspace = Workspace(output)
        names = [calibration] if calibration else workspace.run_record().calibrations
        return output, names
    with state_db(open_site(site), create=False) as db:
        run = db.calibration_run(calrun)  # type: ignore[arg-type]
        request = db.request(run.request_id)
    where = load_site(request.site_of(run.calibration))
    return where.request_folder(request.id) / "output", [run.calibration]


def _known(output: Path, name: str) -> None:
    from b2cal.caf.workspace import Workspace

    if not Workspace(output).calibration(name).has_record():
        raise B2CalError(f"{output} has no calibration {name}")


def _one(
    output: Path | None, calibration: str | None, calrun: int | None, site: str | None
) -> tuple[Path, str]:
    """The workspace folder and the one calibration meant (commands on one job or its jobs)."""
    folder, names = _target(output, calibration, calrun, site)
    if len(names) != 1:
        raise B2CalError("name the calibration: --calibration CAL")
    _known(folder, names[0])
    return folder, names[0]


@jobs_app.command("list")
def jobs_list(
    output: Output = None,
    calibration: CalibrationName = None,
    calrun: CalRun = None,
    iteration: Iteration = None,
    site: SiteOption = None,
    as_json: Json = False,
) -> None:
    """States, attempts, durations, hosts and batch ids of the collector jobs."""
    from rich.table import Table

    from b2cal.caf.status import job_rows
    from b2cal.caf.workspace import Workspace
    from b2cal.cli.console import console

    folder, names = _target(output, calibration, calrun, site)
    rows = {}
    for name in names:
        _known(folder, name)
        rows[name] = job_rows(Workspace(folder).calibration(name), iteration)
    if as_json:
        doc = {name: [row.model_dump(mode="json") for row in found] for name, found in rows.items()}
        sys.stdout.write(json.dumps(doc, indent=1) + "\n")
        return
    for name, found in rows.items():
        it = found[0].iteration if found else "-"
        table = Table(title=f"{name}: collector jobs of iteration {it} ({folder})")
        for column in ("job", "state", "attempts", "files", "runs", "seconds", "host",
                       "batch id", "error"):  # fmt: skip
            table.add_column(column, overflow="fold" if column == "error" else "ellipsis")
        for row in found:
            state = {"done": "[green]done[/]", "failed": "[red]failed[/]"}.get(row.state, row.state)
            table.add_row(
                str(row.number), state, str(row.attempts), str(row.files),
                ",".join(map(str, row.runs)),
                "-" if row.seconds is None else f"{row.seconds:.1f}",
                row.host or "-", row.batch_id or "-", row.error or "",
            )  # fmt: skip
        console.print(table)


@jobs_app.command("show")
def jobs_show(
    job: Annotated[int, typer.Argument(metavar="JOB", help="Job number.")],
    output: Output = None,
    calibration: CalibrationName = None,
    calrun: CalRun = None,
    iteration: Iteration = None,
    site: SiteOption = None,
    lines: Annotated[int, typer.Option(metavar="N", help="Lines of each log.")] = 10,
) -> None:
    """One collector job: its files, how it ran, and the tails of its logs."""
    from b2cal.caf.status import job_rows
    from b2cal.caf.workspace import Workspace
    from b2cal.cli.console import console

    folder, name = _one(output, calibration, calrun, site)
    rows = {row.number: row for row in job_rows(Workspace(folder).calibration(name), iteration)}
    if job not in rows:
        raise B2CalError(f"{name} has no collector job {job} in that iteration")
    row = rows[job]
    for key, value in row.model_dump().items():
        console.print(f"{key}: {value}")
    for log in ("job.log", "batch.out", "batch.err"):
        path = Path(row.folder) / log
        if path.is_file():
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            console.print(f"--- {log} (last {len(tail)} lines)")
            console.print("\n".join(tail), markup=False, highlight=False)


@jobs_app.command("logs")
def jobs_logs(
    job: Annotated[int, typer.Argument(metavar="JOB", help="Job number.")],
    output: Output = None,
    calibration: CalibrationName = None,
    calrun: CalRun = None,
    iteration: Iteration = None,
    site: SiteOption = None,
    lines: Annotated[
        int | None, typer.Option(metavar="N", help="Only the last N lines of each.")
    ] = None,
) -> None:
    """A collector job's logs as they are: its own (job.log), and its stdout and stderr on
    a batch system (batch.out, batch.err)."""
    from b2cal.caf.workspace import Workspace

    folder, name = _one(output, calibration, calrun, site)
    area = Workspace(folder).calibration(name)
    iterations = area.iterations()
    if not iterations:
        raise B2CalError(f"{name} has no collector jobs yet")
    chosen = iterations[-1] if iteration is None else area.iteration(iteration)
    root = chosen.job(job).root
    if not root.is_dir():
        raise B2CalError(f"{name} iteration {chosen.iteration} has no collector job {job}")
    for log in ("job.log", "batch.out", "batch.err"):
        path = root / log
        if path.is_file():
            text = path.read_text(errors="replace").splitlines()
            shown = text[-lines:] if lines else text
            sys.stdout.write(f"==> {path} <==\n" + "".join(f"{line}\n" for line in shown))


@jobs_app.command("resubmit")
def jobs_resubmit(
    output: Output = None,
    calibration: CalibrationName = None,
    calrun: CalRun = None,
    iteration: Iteration = None,
    site: SiteOption = None,
    jobs: Annotated[
        str | None, typer.Option(metavar="N,M", help="Job numbers (default: the failed ones).")
    ] = None,
) -> None:
    """Make chosen jobs of a stopped collection start afresh (full retries): the next run of
    the calibration submits them; finished jobs are kept."""
    from b2cal.caf.jobcontrol import resubmit
    from b2cal.caf.workspace import Workspace
    from b2cal.cli.console import console

    folder, name = _one(output, calibration, calrun, site)
    numbers = parse_int_list(jobs, "--jobs") if jobs is not None else None
    chosen = resubmit(Workspace(folder), name, numbers, iteration)
    if not chosen:
        console.print(f"{name}: no failed collector job to resubmit")
        return
    again = "caf run with the same arguments" if output else "b2cal request rerun (or a retry)"
    console.print(
        f"{name}: jobs {', '.join(map(str, chosen))} start afresh at the next run ({again})"
    )


@jobs_app.command("cancel")
def jobs_cancel(
    output: Output = None,
    calibration: CalibrationName = None,
    calrun: CalRun = None,
    iteration: Iteration = None,
    site: SiteOption = None,
) -> None:
    """Remove the batch jobs a stopped driver left queued or running (a restarted driver
    would pick them up); the backend is the one they were submitted to, as the site sets it."""
    from b2cal.caf.status import job_rows
    from b2cal.caf.workspace import Workspace
    from b2cal.cli.console import console
    from b2cal.processing.jobs import cancel_left_jobs

    folder, names = _target(output, calibration, calrun, site)
    settings = open_site(site).backend
    for name in names:
        _known(folder, name)
        rows = job_rows(Workspace(folder).calibration(name), iteration)
        used = sorted({row.backend for row in rows if row.backend and row.state == "submitted"})
        for backend_name in used:
            chosen = settings.model_copy(update={"name": backend_name})
            cancelled = cancel_left_jobs(chosen, Workspace(folder), name, iteration)
            if cancelled is None:
                console.print(f"{name}: {backend_name} jobs end with their driver: none left")
            else:
                console.print(f"{name}: cancelled {len(cancelled)} {backend_name} jobs")
        if not used:
            console.print(f"{name}: no collector job left queued or running")
