"""``b2cal toy``: the toy detector's data and closure check."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from b2cal.cli.arguments import (
    EXIT_CALIBRATION_FAILED,
    parse_int_list,
    parse_low_stat,
    parse_runs,
)

toy_app = typer.Typer(help="The toy detector: data with known truth.", no_args_is_help=True)


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

    from b2cal.cli.console import console
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
    from b2cal.cli.console import console
    from b2cal.toy.closure import check_closure, format_closure_table
    from b2cal.toy.model import ToyTruth

    names = [n.strip() for n in calibrations.split(",") if n.strip()]
    results = check_closure(output, ToyTruth.read(truth), names)
    console.print(format_closure_table(results), markup=False)
    if not all(r.passed for r in results):
        raise typer.Exit(EXIT_CALIBRATION_FAILED)
