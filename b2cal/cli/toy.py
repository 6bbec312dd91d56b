"""``b2cal toy``: the toy detector's data and closure check."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from b2cal.cli.arguments import (
    EXIT_CALIBRATION_FAILED,
    parse_int_list,
    parse_low_stat,
)
from b2cal.core.iov import parse_runs
from b2cal.errors import B2CalError

toy_app = typer.Typer(help="The toy detector: data with known truth.", no_args_is_help=True)


@toy_app.command("generate")
def toy_generate(
    storage: Annotated[
        Path, typer.Option(metavar="DIR", help="Folder to write the data files into.")
    ],
    exp: Annotated[int, typer.Option(metavar="EXP", help="Experiment number.")],
    runs: Annotated[
        str, typer.Option(metavar="A-B", help="Run range A-B (inclusive) or a single run A.")
    ],
    files_per_run: Annotated[int, typer.Option(metavar="N", help="Files per run and stream.")] = 2,
    events: Annotated[int, typer.Option(metavar="N", help="Events per file.")] = 2000,
    seed: Annotated[
        int, typer.Option(metavar="SEED", help="Random seed (same seed, same data).")
    ] = 1,
    t0_jumps: Annotated[
        str, typer.Option(metavar="R1,R2", help="Runs where every t0 changes.")
    ] = "",
    beamspot_changes: Annotated[
        str, typer.Option(metavar="R1,R2", help="Runs where the beam spot moves.")
    ] = "",
    low_stat: Annotated[
        str,
        typer.Option(
            metavar="RUN=EVENTS,...", help="Low-statistics runs and their events per file."
        ),
    ] = "",
) -> None:
    """Write toy detector files and the truth used to DIR/truth.json (docs/toy-detector.md)."""
    from rich.progress import Progress

    from b2cal.cli.console import console
    from b2cal.toy.generate import draw_truth, planned_files, write_toy_data
    from b2cal.toy.model import TRUTH_FILENAME, ToySettings

    # Everything is checked before the progress bar is drawn or the storage folder made.
    first, last = parse_runs(runs)
    settings = ToySettings(
        files_per_run,
        events,
        parse_int_list(t0_jumps, "--t0-jumps"),
        parse_int_list(beamspot_changes, "--beamspot-changes"),
    )
    truth = draw_truth(
        exp,
        list(range(first, last + 1)),
        seed=seed,
        settings=settings,
        low_stat=parse_low_stat(low_stat),
    )
    if storage.exists() and not storage.is_dir():
        raise B2CalError(f"storage {storage} is a file, not a folder")
    if (storage / TRUTH_FILENAME).exists():
        raise B2CalError(
            f"storage {storage} holds toy data already ({TRUTH_FILENAME}): use another --storage "
            "or remove it (new data would mix with the old files)"
        )
    with Progress(console=console) as progress:
        task = progress.add_task(
            "generating toy data", total=planned_files(truth.runs, files_per_run)
        )
        write_toy_data(storage, truth, on_file=lambda _path: progress.advance(task))
    console.print(
        f"wrote experiment {truth.experiment} runs {first}-{last} to {storage} "
        f"(truth: {storage / TRUTH_FILENAME})"
    )


@toy_app.command("closure")
def toy_closure(
    output: Annotated[Path, typer.Option(metavar="DIR", help="Output folder of `b2cal caf run`.")],
    truth: Annotated[
        Path, typer.Option(metavar="FILE", help="truth.json written by `b2cal toy generate`.")
    ],
    calibrations: Annotated[
        str, typer.Option(metavar="C1,C2", help="Comma-separated calibrations to check.")
    ] = "ChannelT0,ChannelGain,ModuleAlignment,BeamSpot",
) -> None:
    """Check calibration outputs against the toy truth (criteria: docs/toy-detector.md).

    A calibration missing from the output, or whose payloads miss the truth, is a failed row
    of the table (exit status 2); an output folder that is not one of `b2cal caf run` or a
    truth file that cannot be read is an error.
    """
    from b2cal.cli.console import console
    from b2cal.toy.closure import check_closure, format_closure_table
    from b2cal.toy.model import ToyTruth

    names = [n.strip() for n in calibrations.split(",") if n.strip()]
    if not names:
        raise B2CalError("--calibrations names no calibration")
    results = check_closure(output, ToyTruth.read(truth), names)
    console.print(format_closure_table(results), markup=False)
    if not all(r.passed for r in results):
        raise typer.Exit(EXIT_CALIBRATION_FAILED)
