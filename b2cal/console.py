"""What the command line shows: progress bars while calibrations run, tables when they end."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Mapping, Sequence
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from b2cal.caf.calibration import AlgorithmResult, Calibration
from b2cal.caf.iov import IoV
from b2cal.caf.outputs import CalibrationOutcome

#: Tables are wide: when output goes to a file or CI log (no terminal, no COLUMNS), rich would
#: squeeze them to 80 columns.
_WIDTH = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 140
console = Console(highlight=False, width=_WIDTH)

_STYLE = {
    AlgorithmResult.OK: "green",
    AlgorithmResult.ITERATE: "yellow",
    AlgorithmResult.NOT_ENOUGH_DATA: "yellow",
    AlgorithmResult.FAILURE: "red",
}


class RichProgress:
    """One progress bar per calibration: its current stage and its collector jobs."""

    def __init__(self, names: Sequence[str], console_: Console | None = None) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.fields[calibration]:<16}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=console_ or console,
        )
        self._lock = threading.Lock()
        self._tasks: dict[str, TaskID] = {
            name: self._progress.add_task("waiting", total=None, calibration=name) for name in names
        }

    def stage(self, calibration: str, text: str) -> None:
        with self._lock:
            self._progress.update(self._tasks[calibration], description=text)

    def jobs(self, calibration: str, done: int, total: int) -> None:
        with self._lock:
            self._progress.update(self._tasks[calibration], completed=done, total=total)

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._progress.stop()


def outcome_table(outcomes: Mapping[str, CalibrationOutcome]) -> Table:
    """The final table of ``b2cal caf run``: one row per calibration."""
    table = Table(title="Calibration results")
    for column in ("calibration", "result", "iterations", "IoVs", "jobs", "events", "bad files"):
        table.add_column(
            column, justify="right" if column not in ("calibration", "IoVs") else "left"
        )
    table.add_column("validation")
    table.add_column("notes", overflow="fold")
    for name, outcome in outcomes.items():
        style = _STYLE[outcome.result]
        validation = "-"
        if outcome.validation is not None:
            validation = "passed" if outcome.validation["passed"] else "[red]FAILED"
        table.add_row(
            name,
            f"[{style}]{outcome.result.value}",
            str(outcome.iterations),
            iov_summary(outcome.iovs),
            str(outcome.jobs),
            str(outcome.events),
            str(len(outcome.bad_files)),
            validation,
            outcome.message,
        )
    return table


def iov_summary(iovs: Sequence[IoV]) -> str:
    """IoVs as run ranges, e.g. ``e1: r1-4, r5, r6-∞`` (full ``e,r,e,r`` across experiments)."""
    if not iovs:
        return "-"
    exps = {iov.exp_low for iov in iovs}
    if len(exps) > 1 or any(iov.exp_high not in (-1, iov.exp_low) for iov in iovs):
        return ", ".join(str(iov) for iov in iovs)

    def runs(iov: IoV) -> str:
        if iov.is_open_ended:
            return f"r{iov.run_low}-∞"
        if iov.run_high == -1:
            return f"r{iov.run_low}-end"
        if iov.run_high == iov.run_low:
            return f"r{iov.run_low}"
        return f"r{iov.run_low}-{iov.run_high}"

    return f"e{exps.pop()}: " + ", ".join(runs(iov) for iov in iovs)


def calibrations_table(calibrations: Sequence[Calibration]) -> Table:
    table = Table(title="Registered calibrations")
    for column in ("name", "streams", "depends on", "strategy", "max iter.", "owner"):
        table.add_column(column)
    for cal in calibrations:
        table.add_row(
            cal.name,
            ",".join(cal.input_streams),
            ",".join(cal.depends_on) or "-",
            cal.strategy.name.value,
            str(cal.max_iterations),
            cal.owner,
        )
    return table
