"""``b2cal caf`` and ``b2cal calibrations``: run calibrations without Prefect, list plugins."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from b2cal.cli.arguments import EXIT_CALIBRATION_FAILED, parse_runs
from b2cal.errors import B2CalError

caf_app = typer.Typer(help="Run calibrations directly, without Prefect.", no_args_is_help=True)
calibrations_app = typer.Typer(help="Registered calibration plugins.", no_args_is_help=True)


@caf_app.command("run")
def caf_run(
    storage: Annotated[Path, typer.Option(help="Storage folder holding the input files.")],
    exp: Annotated[int, typer.Option(help="Experiment number.")],
    runs: Annotated[str, typer.Option(help="Run range A-B (inclusive) or a single run A.")],
    calibrations: Annotated[
        str, typer.Option(help="Comma-separated calibration names (dependencies are added).")
    ],
    output: Annotated[Path, typer.Option(help="Output folder (rerun the same to resume).")],
    workers: Annotated[
        int | None, typer.Option(help="Local worker processes (default: number of cores).")
    ] = None,
    open_ended: Annotated[
        bool, typer.Option("--open-ended", help="Leave the last IoV of each payload open.")
    ] = False,
    input_db: Annotated[
        list[Path] | None,
        typer.Option(
            help="basf2 local database to look payloads up in, after the calibrations' own "
            "(repeat; first match wins)."
        ),
    ] = None,
) -> None:
    """Run calibrations on local processes and write basf2-style output databases."""
    from b2cal.backends.local import LocalBackend
    from b2cal.caf.graph import with_dependencies
    from b2cal.caf.localdb import read_database_txt
    from b2cal.caf.registry import load
    from b2cal.caf.runner import CalibrationInput, output_lock, prepare_output, run_calibrations
    from b2cal.console import RichProgress, console, outcome_table

    first, last = parse_runs(runs)
    if workers is not None and workers < 1:
        raise B2CalError(f"--workers must be at least 1, got {workers}")
    names = [n.strip() for n in calibrations.split(",") if n.strip()]
    if not names:
        raise B2CalError("--calibrations names no calibration")
    found, added = with_dependencies(names, load)
    if added:
        console.print(f"adding dependencies: {', '.join(added)}")
    databases = tuple(path.resolve() for path in input_db or [])
    for database in databases:
        if not (database / "database.txt").is_file():
            raise B2CalError(f"--input-db {database} is not a local database (no database.txt)")
        read_database_txt(database)  # a malformed line is refused now, not in a job
    selection = CalibrationInput(
        storage.resolve(), exp, first, last, open_ended=open_ended, input_databases=databases
    )
    if not storage.is_dir():
        raise B2CalError(f"storage folder {storage} does not exist")
    for name, cal in found.items():
        if not selection.files(cal.input_streams):
            raise B2CalError(
                f"no input files for {name} (streams {','.join(cal.input_streams)}) in "
                f"experiment {exp} runs {first}-{last} under {storage}"
            )
    arguments = {
        "storage": str(storage.resolve()),
        "exp": exp,
        "runs": f"{first}-{last}",
        "calibrations": sorted(found),
        "open_ended": open_ended,
        "input_databases": [str(d) for d in databases],
    }
    with output_lock(output), LocalBackend(workers) as backend:
        run_id = prepare_output(output, arguments)
        _log_to(output / "b2cal.log")
        with RichProgress(list(found)) as progress:
            backend.start()
            outcomes = run_calibrations(
                found, selection, output, backend, calibration_run=run_id, progress=progress
            )
    console.print(outcome_table(outcomes))
    bad = [(name, b) for name, o in outcomes.items() for b in o.bad_files]
    for name, bad_file in bad:
        console.print(f"[yellow]bad input file[/] ({name}): {bad_file.path}: {bad_file.reason}")
    console.print(f"output databases: {output}/<Calibration>/outputdb/")
    from b2cal.caf.calibration import AlgorithmResult

    if any(o.result is not AlgorithmResult.OK for o in outcomes.values()):
        raise typer.Exit(EXIT_CALIBRATION_FAILED)


@calibrations_app.command("list")
def calibrations_list() -> None:
    """List the calibrations registered in the b2cal.calibrations entry points."""
    from b2cal.caf.registry import available, load
    from b2cal.console import calibrations_table, console

    console.print(calibrations_table([load(name) for name in available()]))


def _log_to(path: Path) -> None:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger("b2cal")
    root.setLevel(logging.INFO)
    root.addHandler(handler)
