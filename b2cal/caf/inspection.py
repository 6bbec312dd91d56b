"""What an algorithm saw: the merged collector output of one iteration (``b2cal caf inspect``).

When a fit goes wrong, a CAF expert opens the merged collector output. This module merges an
iteration's collector jobs exactly as :func:`~b2cal.caf.steps.run_algorithm` does (in job
order), optionally keeps one run, summarises every value (histograms: axes, entries, mean and
spread per axis; columns: count, mean, spread, range; numbers) and plots histograms and columns
to a PNG file.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from b2cal.caf.accumulator import Accumulator, Column, sum_runs
from b2cal.caf.jobs import merge_job_outputs
from b2cal.caf.workspace import Workspace
from b2cal.core.iov import ExpRun
from b2cal.errors import B2CalError


class Inspected(BaseModel):
    """The merged collector output of an iteration (of all its runs, or of one)."""

    model_config = {"arbitrary_types_allowed": True}

    calibration: str
    iteration: int
    runs: list[ExpRun]
    data: Accumulator


class ValueSummary(BaseModel):
    key: str
    kind: str
    summary: str


def merged_output(
    workspace: Workspace, calibration: str, iteration: int | None = None, run: int | None = None
) -> Inspected:
    """The merged output of ``iteration`` (default: the final iteration of a finished
    calibration, else the last one fully collected)."""
    if iteration is not None and iteration < 0:
        raise B2CalError(f"iteration numbers start at 0, not {iteration}")
    record = workspace.run_record()
    if calibration not in record.calibrations:
        known = ", ".join(record.calibrations)
        raise B2CalError(f"{calibration} is not a calibration of {workspace.root} ({known})")
    area = workspace.calibration(calibration)
    collected = [it for it in area.iterations() if it.jobs() and all(j.done for j in it.jobs())]
    outcome = area.outcome()
    if iteration is None and outcome is not None and outcome.iterations:
        iteration = outcome.iterations - 1  # the final iteration of a finished calibration
    if iteration is None:
        if not collected:
            raise B2CalError(f"{calibration} has no fully collected iteration yet")
        chosen = collected[-1]
    else:
        matches = [it for it in collected if it.iteration == iteration]
        if not matches:
            raise B2CalError(
                f"{calibration} iteration {iteration} is not fully collected "
                f"(collected: {', '.join(str(it.iteration) for it in collected) or 'none'})"
            )
        chosen = matches[0]
    per_run = merge_job_outputs(chosen.jobs())
    runs = sorted(per_run)
    if run is not None:
        runs = [r for r in runs if r.run == run]
        if not runs:
            have = ", ".join(str(r.run) for r in sorted(per_run)) or "none"
            raise B2CalError(
                f"{calibration} iteration {chosen.iteration} has no data of run {run} "
                f"(runs: {have})"
            )
    return Inspected(
        calibration=calibration, iteration=chosen.iteration, runs=runs, data=sum_runs(per_run, runs)
    )


def _values(data: Accumulator, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every value, nested accumulators flattened (``outer.inner``) and columns of several
    components (vertex x, y, z) split into one column each (``vertices[0]``)."""
    for key in sorted(data):
        value = data[key]
        if isinstance(value, Accumulator):
            yield from _values(value, f"{prefix}{key}.")
        elif isinstance(value, Column) and np.ndim(value.values) == 2:
            for component in range(np.shape(value.values)[1]):
                yield f"{prefix}{key}[{component}]", Column(value.values[:, component])
        else:
            yield f"{prefix}{key}", value


def summarise(data: Accumulator) -> list[ValueSummary]:
    """One line per value, nested accumulators flattened to ``outer.inner`` keys."""
    return [_summary(key, value) for key, value in _values(data)]


def _is_hist(value: Any) -> bool:
    return hasattr(value, "axes") and hasattr(value, "values")


def _summary(key: str, value: Any) -> ValueSummary:
    if _is_hist(value):
        counts = np.asarray(value.values(), dtype=np.float64)
        axes = []
        for number, axis in enumerate(value.axes):
            name = axis.name or f"axis {number}"
            edges = np.asarray(axis.edges, dtype=np.float64)
            other = tuple(i for i in range(counts.ndim) if i != number)
            projection = counts.sum(axis=other) if other else counts
            mean, spread = _moments(0.5 * (edges[1:] + edges[:-1]), projection)
            axes.append(
                f"{name}[{len(edges) - 1} bins {edges[0]:g}..{edges[-1]:g}] "
                f"mean {mean:.4g} std {spread:.4g}"
            )
        text = f"{counts.sum():.0f} entries; " + "; ".join(axes)
        return ValueSummary(key=key, kind=f"{counts.ndim}-D histogram", summary=text)
    if isinstance(value, Column):
        values = np.asarray(value.values, dtype=np.float64).ravel()
        if values.size == 0:
            return ValueSummary(key=key, kind="column", summary="empty")
        text = (
            f"{values.size} values; mean {values.mean():.4g} std {values.std():.4g}; "
            f"range {values.min():.4g}..{values.max():.4g}"
        )
        return ValueSummary(key=key, kind="column", summary=text)
    if isinstance(value, int | float | np.number):
        return ValueSummary(key=key, kind="number", summary=f"{value:g}")
    return ValueSummary(key=key, kind=type(value).__name__, summary=repr(value)[:120])


def _moments(centres: Any, weights: Any) -> tuple[float, float]:
    total = float(np.sum(weights))
    if total <= 0:
        return math.nan, math.nan
    mean = float(np.sum(centres * weights) / total)
    return mean, float(np.sqrt(np.sum(weights * (centres - mean) ** 2) / total))


def check_plot_path(path: Path) -> None:
    """Refuse, before anything is computed, a plot file that cannot be written as PNG."""
    if path.suffix.lower() != ".png":
        raise B2CalError(f"--plot {path}: the plot is a PNG file: name it ….png")
    if path.is_dir():
        raise B2CalError(f"--plot {path} is a folder")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise B2CalError(f"--plot {path}: {parent} is a file, not a folder")


def plot(inspected: Inspected, path: Path) -> int:
    """Plot every histogram and column of ``inspected`` into one PNG file; how many plots
    (0, and no file, when there are only numbers)."""
    check_plot_path(path)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = [
        (key, value)
        for key, value in _values(inspected.data)
        if (_is_hist(value) and len(value.axes) <= 2) or isinstance(value, Column)
    ]
    if not items:
        return 0
    columns = min(3, len(items))
    rows = math.ceil(len(items) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.8 * rows), squeeze=False)
    for ax, (key, value) in zip(axes.ravel(), items, strict=False):
        _draw(ax, key, value)
    for ax in axes.ravel()[len(items) :]:
        ax.set_visible(False)
    runs = ", ".join(str(r.run) for r in inspected.runs)
    figure.suptitle(f"{inspected.calibration} iteration {inspected.iteration}, runs {runs}")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return len(items)


def _draw(ax: Any, key: str, value: Any) -> None:
    if isinstance(value, Column):
        ax.hist(np.asarray(value.values, dtype=np.float64).ravel(), bins=100, histtype="step")
        ax.set_xlabel(key)
    elif len(value.axes) == 1:
        edges = np.asarray(value.axes[0].edges)
        ax.stairs(np.asarray(value.values()), edges)
        ax.set_xlabel(value.axes[0].label or value.axes[0].name or key)
    else:
        x, y = (np.asarray(axis.edges) for axis in value.axes)
        mesh = ax.pcolormesh(x, y, np.asarray(value.values()).T, shading="flat")
        ax.figure.colorbar(mesh, ax=ax)
        ax.set_xlabel(value.axes[0].label or value.axes[0].name)
        ax.set_ylabel(value.axes[1].label or value.axes[1].name)
    ax.set_title(key)
