"""The ``b2cal`` command.

Every command exits non-zero with a one-line ``error: ...`` on bad input and never prints a
traceback; unexpected errors are reported in one line too, with the full traceback written to
a log file that the line names.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import threading
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from b2cal import __version__
from b2cal.errors import B2CalError

app = typer.Typer(
    name="b2cal",
    help="Automated detector calibration: CAF engine, toy detector, conditions database.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
toy_app = typer.Typer(
    help="The toy detector: synthetic data with known truth.", no_args_is_help=True
)
caf_app = typer.Typer(help="Run calibrations directly, without Prefect.", no_args_is_help=True)
calibrations_app = typer.Typer(help="Registered calibration plugins.", no_args_is_help=True)
app.add_typer(toy_app, name="toy")
app.add_typer(caf_app, name="caf")
app.add_typer(calibrations_app, name="calibrations")

EXIT_OK, EXIT_BAD_INPUT, EXIT_CALIBRATION_FAILED = 0, 1, 2


def parse_runs(text: str) -> tuple[int, int]:
    """``"A-B"`` (inclusive) or ``"A"`` -> (first, last)."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", text)
    if match is None:
        raise B2CalError(f"invalid run range {text!r}: expected A-B or A (run numbers >= 0)")
    first = int(match[1])
    last = int(match[2]) if match[2] is not None else first
    if last < first:
        raise B2CalError(f"invalid run range {text!r}: it ends before it starts")
    return first, last


def parse_int_list(text: str, option: str) -> list[int]:
    if not text.strip():
        return []
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise B2CalError(f"{option} takes comma-separated run numbers, got {text!r}") from None


def parse_low_stat(text: str) -> dict[int, int]:
    result: dict[int, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        match = re.fullmatch(r"(\d+)=(\d+)", part)
        if match is None:
            raise B2CalError(f"--low-stat takes RUN=EVENTS,..., got {part!r}")
        result[int(match[1])] = int(match[2])
    return result


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        typer.echo(f"b2cal {__version__}")
        raise typer.Exit()


@toy_app.command("generate")
def toy_generate(
    storage: Annotated[Path, typer.Option(help="Folder to write the data files into.")],
    exp: Annotated[int, typer.Option(help="Experiment number.")],
    runs: Annotated[str, typer.Option(help="Run range A-B (inclusive) or a single run A.")],
    files_per_run: Annotated[int, typer.Option(help="Files per run and stream.")] = 2,
    events: Annotated[int, typer.Option(help="Events per file.")] = 2000,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same data).")] = 1,
    t0_jumps: Annotated[str, typer.Option(help="Runs where every t0 changes: R1,R2,...")] = "",
    beamspot_changes: Annotated[str, typer.Option(help="Runs where the beam spot moves.")] = "",
    low_stat: Annotated[
        str, typer.Option(help="Low-statistics runs: RUN=EVENTS,... (events per file).")
    ] = "",
) -> None:
    """Write toy detector files (TOY_DETECTOR.md) and the truth used to STORAGE/truth.json."""
    from rich.progress import Progress

    from b2cal.console import console
    from b2cal.toy.generate import generate_toy, planned_files

    first, last = parse_runs(runs)
    run_list = list(range(first, last + 1))
    with Progress(console=console) as progress:
        task = progress.add_task(
            "generating toy data", total=planned_files(run_list, files_per_run)
        )
        truth = generate_toy(
            storage,
            exp,
            run_list,
            files_per_run=files_per_run,
            events=events,
            seed=seed,
            t0_jumps=parse_int_list(t0_jumps, "--t0-jumps"),
            beamspot_changes=parse_int_list(beamspot_changes, "--beamspot-changes"),
            low_stat=parse_low_stat(low_stat),
            on_file=lambda _path: progress.advance(task),
        )
    console.print(
        f"wrote experiment {truth.experiment} runs {first}-{last} to {storage} "
        f"(truth: {storage / 'truth.json'})"
    )


@toy_app.command("closure")
def toy_closure(
    output: Annotated[Path, typer.Option(help="Output folder of `b2cal caf run`.")],
    truth: Annotated[Path, typer.Option(help="truth.json written by `b2cal toy generate`.")],
    calibrations: Annotated[
        str, typer.Option(help="Comma-separated calibrations to check.")
    ] = "ChannelT0,ChannelGain,ModuleAlignment,BeamSpot",
) -> None:
    """Check calibration outputs against the toy truth (criteria of TOY_DETECTOR.md)."""
    from b2cal.console import console
    from b2cal.toy.closure import check_closure, format_closure_table
    from b2cal.toy.model import ToyTruth

    names = [n.strip() for n in calibrations.split(",") if n.strip()]
    results = check_closure(output, ToyTruth.read(truth), names)
    console.print(format_closure_table(results), markup=False)
    if not all(r.passed for r in results):
        raise typer.Exit(EXIT_CALIBRATION_FAILED)


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
) -> None:
    """Run calibrations on local processes and write basf2-style output databases."""
    from b2cal.backends.local import LocalBackend
    from b2cal.caf.graph import with_dependencies
    from b2cal.caf.registry import load
    from b2cal.caf.runner import CalibrationInput, prepare_output, run_calibrations
    from b2cal.console import RichProgress, console, outcome_table

    first, last = parse_runs(runs)
    names = [n.strip() for n in calibrations.split(",") if n.strip()]
    if not names:
        raise B2CalError("--calibrations names no calibration")
    found, added = with_dependencies(names, load)
    if added:
        console.print(f"adding dependencies: {', '.join(added)}")
    selection = CalibrationInput(storage.resolve(), exp, first, last, open_ended=open_ended)
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
    }
    run_id = prepare_output(output, arguments)
    _log_to(output / "b2cal.log")
    stop = threading.Event()
    with LocalBackend(workers) as backend, RichProgress(list(found)) as progress:
        backend.start()
        try:
            outcomes = run_calibrations(
                found,
                selection,
                output,
                backend,
                calibration_run=run_id,
                progress=progress,
                stop=stop,
            )
        except KeyboardInterrupt:
            stop.set()
            raise
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (see module docstring)."""
    args = list(sys.argv[1:] if argv is None else argv)
    command = typer.main.get_command(app)
    try:
        status = command.main(args=args, prog_name="b2cal", standalone_mode=False)
    except B2CalError as exc:
        _error(str(exc))
        return EXIT_BAD_INPUT
    except typer.Abort:
        _error("interrupted")
        return 130
    except typer.TyperException as exc:  # usage errors: missing option, bad value
        format_message = getattr(exc, "format_message", None)
        _error(format_message() if format_message else str(exc))
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        _error("interrupted; rerun the same command to resume")
        return 130
    except Exception as exc:
        fd, log = tempfile.mkstemp(prefix="b2cal-crash-", suffix=".log")
        with os.fdopen(fd, "w") as handle:
            handle.write(traceback.format_exc())
        _error(f"internal error {type(exc).__name__}: {exc} (traceback in {log})")
        return EXIT_BAD_INPUT
    return status if isinstance(status, int) else EXIT_OK


def _error(message: str) -> None:
    first_line = " ".join(message.split())
    print(f"error: {first_line}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
