"""How the state database is shown: tables of calibration runs and their constants, JSON
documents of requests, ages and durations."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.table import Table

    from b2cal.db.model import CalibrationRun, Request


def age(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    seconds = int((datetime.now(UTC) - moment).total_seconds())
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    if seconds < 172800:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} d ago"


def duration(run: CalibrationRun) -> str:
    if run.started is None:
        return "-"
    end = run.finished or datetime.now(UTC)
    seconds = int((end - run.started).total_seconds())
    return f"{seconds // 60}:{seconds % 60:02d}"


def request_doc(request: Request, runs: list[CalibrationRun]) -> dict[str, object]:
    doc = {k: v for k, v in request.__dict__.items()}
    doc.update(
        kind=request.kind.value,
        state=request.state.value,
        created=str(request.created),
        updated=str(request.updated),
    )
    doc["calibration_runs"] = [
        {
            "id": c.id,
            "calibration": c.calibration,
            "state": c.state.value,
            "attempt": c.attempt,
            "iteration": c.iteration,
            "message": c.message,
        }
        for c in runs
    ]
    return doc


def constants_table(run: CalibrationRun) -> Table:
    """The validated constants of a calibration run, per IoV and field (from its summary)."""
    from rich.table import Table

    summary = run.summary or {}
    verdict = "passed" if summary.get("passed") else "FAILED" if summary else "not validated"
    reference = summary.get("reference_tag") or "none"
    table = Table(title=f"{run.calibration}: validation {verdict} (reference tag: {reference})")
    for column in ("IoV", "field", "n", "mean", "min", "max", "change", "max |pull|", "flagged"):
        table.add_column(column, justify="left" if column in ("IoV", "field") else "right")
    for f in summary.get("fields", []):
        change = "" if f.get("change") is None else f"{f['change']:+.4g}"
        pull = "" if f.get("max_abs_pull") is None else f"{f['max_abs_pull']:.2f}"
        table.add_row(
            f["iov"],
            f["field"],
            str(f["size"]),
            f"{f['mean']:.4g}",
            f"{f['min']:.4g}",
            f"{f['max']:.4g}",
            change,
            pull,
            str(f.get("flagged") or ""),
        )
    return table


def calrun_table(
    runs: list[CalibrationRun], title: str, requests: Mapping[int, Request] | None = None
) -> Table:
    """Calibration runs, one a row; with their ``requests``, also the site each runs at."""
    from rich.table import Table

    table = Table(title=title)
    columns = ["calrun", "request", "calibration", "state", "attempt", "iteration", "duration"]
    if requests is not None:
        columns.insert(3, "site")
    for column in (*columns, "message"):
        table.add_column(column, overflow="fold" if column == "message" else "ellipsis")
    for c in runs:
        state = c.state.value
        if c.state.value == "AWAITING_SIGNOFF":
            state = f"[bold yellow]{state}[/]"
        elif c.state.value in ("FAILED", "REJECTED", "CANCELLED"):
            state = f"[red]{state}[/]"
        elif c.state.value == "UPLOADED":
            state = f"[green]{state}[/]"
        row = [
            str(c.id),
            str(c.request_id),
            c.calibration,
            state,
            str(c.attempt),
            "-" if c.iteration is None else str(c.iteration + 1),
            duration(c),
            c.message or "",
        ]
        if requests is not None:
            row.insert(3, requests[c.request_id].site_of(c.calibration))
        table.add_row(*row)
    return table
