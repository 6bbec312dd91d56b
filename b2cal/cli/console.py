"""What the command line shows: progress while calibrations run, tables when they end.

Tables go to standard output; progress goes to standard error, as a rich display on a terminal
and as plain timestamped lines otherwise (nohup, a batch job, a Prefect worker's log): a line at
every stage, and job counts at most every few seconds.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import IO, Self

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
from b2cal.caf.plan import Plan
from b2cal.caf.records import CalibrationOutcome
from b2cal.caf.status import CalibrationStatus
from b2cal.core.iov import IoV, run_ranges

#: Tables are wide: when output goes to a file or CI log (no terminal, no COLUMNS), rich would
#: squeeze them to 80 columns.
_WIDTH = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 140
console = Console(highlight=False, width=_WIDTH)
errors = Console(stderr=True, highlight=False, width=_WIDTH)

_STYLE = {
    AlgorithmResult.OK: "green",
    AlgorithmResult.ITERATE: "yellow",
    AlgorithmResult.NOT_ENOUGH_DATA: "yellow",
    AlgorithmResult.FAILURE: "red",
}
#: Plain progress lines report job counts at most this often (per calibration).
PLAIN_EVERY_SECONDS = 5.0


class RichProgress:
    """One progress bar per calibration: its current stage and its collector jobs."""

    def __init__(self, names: Sequence[str], console_: Console | None = None) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.fields[calibration]:<16}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=console_ or errors,
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

    def __enter__(self) -> Self:
        self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._progress.stop()


class PlainProgress:
    """Progress as plain lines, for logs: every stage, and job counts every few seconds."""

    def __init__(self, stream: IO[str] | None = None, every: float = PLAIN_EVERY_SECONDS) -> None:
        self._stream = stream or sys.stderr
        self._every = every
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}

    def _line(self, text: str) -> None:
        stamp = datetime.now().strftime("%H:%M:%S")
        self._stream.write(f"{stamp} {text}\n")
        self._stream.flush()

    def stage(self, calibration: str, text: str) -> None:
        with self._lock:
            self._line(f"{calibration}: {text}")

    def jobs(self, calibration: str, done: int, total: int) -> None:
        with self._lock:
            now = time.monotonic()
            if done < total and now - self._last.get(calibration, -1e9) < self._every:
                return
            self._last[calibration] = now
            self._line(f"{calibration}: {done}/{total} collector jobs done")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def progress_display(names: Sequence[str]) -> RichProgress | PlainProgress:
    """Bars on a terminal, plain lines otherwise (both on standard error)."""
    return RichProgress(names) if sys.stderr.isatty() else PlainProgress()


def outcome_table(outcomes: Mapping[str, CalibrationOutcome]) -> Table:
    """The final table of ``b2cal caf run``: one row per calibration."""
    table = Table(title="Calibration results")
    table.add_column("calibration", no_wrap=True)  # names are never cut
    for column in ("result", "iterations", "IoVs", "jobs", "events", "bad files"):
        table.add_column(column, justify="left" if column == "IoVs" else "right")
    table.add_column("validation")
    table.add_column("notes", overflow="fold")
    for name, outcome in outcomes.items():
        style = _STYLE[outcome.result]
        validation = "-"
        if outcome.validation is not None:
            validation = "passed" if outcome.validation.passed else "[red]FAILED"
        notes = [outcome.message] if outcome.message else []
        if outcome.runs_without_files:
            notes.append(
                f"[yellow]no input files for runs {run_ranges(outcome.runs_without_files)}[/]"
            )
        table.add_row(
            name,
            f"[{style}]{outcome.result.value}",
            str(outcome.iterations),
            iov_summary(outcome.iovs),
            str(outcome.jobs),
            str(outcome.events),
            str(len(outcome.bad_files)),
            validation,
            "; ".join(notes),
        )
    return table


#: More IoVs than this are summarised as the first and last few.
_IOVS_SHOWN = 8


def iov_summary(iovs: Sequence[IoV]) -> str:
    """IoVs as run ranges, e.g. ``e1: r1-4, r5, r6-∞`` (full ``e,r,e,r`` across experiments);
    many IoVs as ``30 IoVs, e1: r1, r2, r3, …, r29, r30-∞``."""
    if not iovs:
        return "-"
    if len(iovs) > _IOVS_SHOWN:
        ends = [*iovs[:3], *iovs[-2:]]
        parts = iov_summary(ends).split(", ")
        return f"{len(iovs)} IoVs, " + ", ".join([*parts[:3], "…", *parts[3:]])
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
    for column in ("name", "streams", "depends on", "strategy", "max iter.", "settings", "owner"):
        table.add_column(column)
    for cal in calibrations:
        settings = "-"
        if cal.settings is not None:
            read = cal.settings.collector_fields
            settings = ", ".join(
                f"{k}={v}" + (" (collector)" if read is None or k in read else "")
                for k, v in cal.settings.model_dump().items()
            )
        table.add_row(
            cal.name,
            ",".join(cal.input_streams),
            ",".join(cal.depends_on) or "-",
            cal.strategy.name.value,
            str(cal.max_iterations),
            settings,
            cal.owner,
        )
    return table


def plan_tables(plan: Plan) -> list[Table]:
    """``caf run --dry-run``: the calibrations in order, then each one's jobs and files."""
    request = plan.request
    overview = Table(
        title=f"Plan: experiment {request.exp} runs {request.first_run}-{request.last_run} "
        f"from {request.source()}"
    )
    for column in (
        "#", "calibration", "depends on", "strategy", "max iter.", "files", "jobs",
        "files/job", "runs without files", "config",
    ):  # fmt: skip
        overview.add_column(
            column,
            no_wrap=column == "calibration",
            overflow="fold" if column == "config" else "ellipsis",
        )
    for number, name in enumerate(plan.order, start=1):
        cal = plan.calibrations[name]
        per_job = f"{min(cal.job_files)}-{max(cal.job_files)}" if cal.job_files else "-"
        if cal.job_files and min(cal.job_files) == max(cal.job_files):
            per_job = str(cal.job_files[0])
        overview.add_row(
            str(number),
            name,
            ",".join(cal.depends_on) or "-",
            cal.strategy,
            str(cal.max_iterations),
            str(len(cal.files)),
            str(len(cal.job_files)),
            per_job,
            f"[yellow]{run_ranges(cal.runs_without_files)}" if cal.runs_without_files else "-",
            ", ".join(f"{k}={v}" for k, v in cal.config.items()) or "-",
        )
    if request.input_databases:
        overview.caption = "input databases, last in the chain: " + ", ".join(
            str(d) for d in request.input_databases
        )
    tables = [overview]
    for name in plan.order:
        cal = plan.calibrations[name]
        folders = sorted({str(f.path.parent) for f in cal.files})
        where = folders[0] if len(folders) == 1 else "their folders"
        jobs = Table(title=f"{name}: collector jobs of each iteration (files in {where})")
        for column in ("job", "files", "runs", "input files"):
            jobs.add_column(column, overflow="fold")
        start = 0
        for index, count in enumerate(cal.job_files):
            group = cal.files[start : start + count]
            start += count
            shown = [f.path.name if len(folders) == 1 else str(f.path) for f in group]
            jobs.add_row(str(index), str(count), run_ranges(f.run for f in group), "\n".join(shown))
        tables.append(jobs)
    return tables


def status_table(rows: Sequence[CalibrationStatus], title: str) -> Table:
    table = Table(title=title)
    for column in ("calibration", "state", "iterations", "jobs", "done", "failed", "running"):
        left = column in ("calibration", "state")
        table.add_column(
            column, justify="left" if left else "right", no_wrap=column == "calibration"
        )
    table.add_column("last error", overflow="fold")
    for row in rows:
        state = row.state
        if not row.active and row.state not in (
            "OK",
            "NOT_ENOUGH_DATA",
            "FAILURE",
            "not started",
            "not run",
        ):
            state += " [yellow](stopped)"
        elif row.active:
            state += " [green](active)"
        table.add_row(
            row.calibration,
            state,
            "-" if row.iteration is None else str(row.iteration + 1),
            str(row.jobs),
            str(row.done),
            str(row.failed),
            str(row.running),
            row.last_error,
        )
    return table
