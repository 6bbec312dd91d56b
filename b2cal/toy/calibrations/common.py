"""Helpers shared by the toy detector's reference calibrations: event columns, upstream payloads
and the sanity checks of their validation hooks.

Kept apart from the calibrations so each of them states only its physics.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import awkward as ak
import numpy as np
import numpy.typing as npt

from b2cal.caf import (
    Accumulator,
    AlgorithmResult,
    Events,
    Execution,
    PayloadDoc,
    RunContext,
    ValidationReport,
)
from b2cal.errors import B2CalError
from b2cal.toy.calibrations.peak_fit import (
    Background,
    PeakFits,
    counts_near_peak,
    fit_rows,
    peak_positions,
)
from b2cal.toy.model import FloatArray

#: How many problems a failed validation spells out in its message.
_PROBLEMS_SHOWN = 5


def float_column(events: Events, branch: str) -> FloatArray:
    """All values of ``branch`` in the file, flattened over events, as float64.

    Per-object branches are jagged (one list per event) and per-event ones flat; both come
    out as one array in event order. float64 keeps sums and differences of float32 inputs exact.
    """
    return np.asarray(ak.flatten(events[branch], axis=None), dtype=np.float64)


def int_column(events: Events, branch: str) -> npt.NDArray[np.int64]:
    """Like :func:`float_column`, for integer branches (channel and module numbers)."""
    return np.asarray(ak.flatten(events[branch], axis=None), dtype=np.int64)


def upstream_payload(
    run: RunContext, name: str, needed_by: str, vectors: Mapping[str, int]
) -> dict[str, FloatArray]:
    """The fields ``vectors`` (name -> length) of payload ``name`` valid for ``run``, as arrays.

    A calibration that depends on another cannot fall back on defaults: its result would be
    silently wrong. So a missing payload or a malformed field is an error the user must fix.
    """
    doc = run.payload(name)
    if doc is None:
        raise B2CalError(
            f"{needed_by} needs the {name} payload for run {run.exprun}, but the database chain "
            f"has none: calibrate {name} first or give an input global tag that holds it"
        )
    return {field: payload_vector(doc, name, field, size) for field, size in vectors.items()}


def payload_vector(doc: PayloadDoc, name: str, field: str, size: int) -> FloatArray:
    """Field ``field`` of payload ``doc`` as a flat array of ``size`` finite floats, or an error.

    Matrices come out flattened (row-major); the caller reshapes them.
    """
    try:
        values = np.asarray(doc[field], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise B2CalError(f"payload {name} has no numeric field {field!r}") from exc
    if values.size != size or not np.all(np.isfinite(values)):
        raise B2CalError(f"payload {name}: {field} must hold {size} finite numbers")
    return values.reshape(-1)


def not_enough_data(message: str, metrics: dict[str, Any]) -> Execution:
    """The cheap data check failed: the engine merges the runs with the next ones and retries."""
    return Execution(AlgorithmResult.NOT_ENOUGH_DATA, metrics=metrics, message=message)


def histogram_rows(histogram: Any, axis: str) -> tuple[FloatArray, FloatArray]:
    """Bin contents of a 2-D histogram (one row per channel or module) and edges of ``axis``."""
    counts = np.asarray(histogram.values(), dtype=np.float64)
    edges = np.asarray(histogram.axes[axis].edges, dtype=np.float64)
    return counts, edges


def too_few(
    per_row: FloatArray, minimum: int, rows: str, entries: str, metrics: dict[str, Any]
) -> Execution | None:
    """NOT_ENOUGH_DATA if any row has fewer than ``minimum`` entries, saying how many; else None."""
    sparse = int(np.count_nonzero(per_row < minimum))
    if sparse == 0:
        return None
    return not_enough_data(f"{sparse} {rows} have fewer than {minimum} {entries}", metrics)


def fit_problem(
    fits: PeakFits, what: str, first_label: int, entries: str, metrics: dict[str, Any]
) -> Execution | None:
    """None if every peak fit is usable; otherwise why not, naming the rows that failed.

    When every failed fit lacks data (its likelihood does not pin the peak down) the answer is
    NOT_ENOUGH_DATA, so a sequential strategy merges the runs with the next ones as it does
    after a failed data check. Any other failed fit (no peak, a spike, a peak cut by the
    window) is a FAILURE: more data of the same kind would not help. Rows are labelled
    ``what`` ``first_label + row``; ``entries`` names what the histogram counts ("hits").
    Records in ``metrics`` how many fits needed a retry and, on a problem, how many failed.
    """
    metrics["fits_retried"] = fits.retried()
    failed = fits.failed()
    if not failed:
        return None
    metrics["failed_fits"] = len(failed)
    details = ", ".join(
        f"{what} {first_label + row} ({fits.fits[row].status}; "
        f"{fits.fits[row].entries:.0f} {entries} in the fit window)"
        for row in failed
    )
    if all(fits.fits[row].lacks_data for row in failed):
        return not_enough_data(f"peak not determined by the data for {details}", metrics)
    return Execution(
        AlgorithmResult.FAILURE, metrics=metrics, message=f"peak fit failed for {details}"
    )


class Checks:
    """Collects the problems a validation hook finds, then turns them into a report."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def within(self, what: str, values: Iterable[float], low: float, high: float) -> None:
        """Every value finite and inside ``[low, high]``."""
        bad = [v for v in values if not (math.isfinite(v) and low <= v <= high)]
        if bad:
            self.problems.append(f"{what}: {len(bad)} value(s) not finite or outside {low}..{high}")

    def positive(self, what: str, values: Iterable[float]) -> None:
        """Every uncertainty finite and strictly positive."""
        bad = [v for v in values if not (math.isfinite(v) and v > 0.0)]
        if bad:
            self.problems.append(f"{what}: {len(bad)} uncertainty(ies) not finite and positive")

    def require(self, condition: bool, problem: str) -> None:
        if not condition:
            self.problems.append(problem)

    def report(self, metrics: dict[str, Any]) -> ValidationReport:
        shown = "; ".join(self.problems[:_PROBLEMS_SHOWN])
        more = len(self.problems) - _PROBLEMS_SHOWN
        message = shown + (f"; and {more} more" if more > 0 else "")
        return ValidationReport(passed=not self.problems, metrics=metrics, message=message)


def payloads_named(
    payloads: Mapping[str, Sequence[PayloadDoc]], name: str, checks: Checks
) -> Sequence[PayloadDoc]:
    """The final payloads ``name`` (in IoV order); an absent or empty list is a problem."""
    docs = payloads.get(name, ())
    checks.require(len(docs) > 0, f"no {name} payload was produced")
    return docs


def vector_field(doc: PayloadDoc, field: str, size: int, checks: Checks) -> list[float]:
    """Field ``field`` of ``doc`` as floats if it is a list of ``size`` numbers, else []."""
    values = doc.get(field)
    if not (
        isinstance(values, list)
        and len(values) == size
        and all(isinstance(v, int | float) for v in values)
    ):
        checks.require(False, f"field {field} is not a list of {size} numbers")
        return []
    return [float(v) for v in values]


def scalar_field(doc: PayloadDoc, field: str, checks: Checks) -> float | None:
    """Field ``field`` of ``doc`` as a float if it is a number, else None (and a problem)."""
    value = doc.get(field)
    if not isinstance(value, int | float):
        checks.require(False, f"field {field} is not a number")
        return None
    return float(value)


@dataclass(frozen=True)
class RowPeaks:
    """One peak per histogram row (a channel's hit times, a module's residuals), found alike.

    First a cheap data check — every row needs ``minimum`` entries within ``check_half_width``
    of its most populated bin, so a sequential strategy can merge short runs before any fit —
    then a fit of each row's peak over ``fit_half_width`` around that bin.
    """

    key: str
    axis: str
    check_half_width: float
    fit_half_width: float
    minimum: int
    background: Background
    sigma_guess: float
    row: str
    first_label: int
    entries: str

    def fit(self, data: Accumulator, metrics: dict[str, Any]) -> PeakFits | Execution:
        """The fits of histogram ``data[key]``, or the execution saying why there are none.

        NOT_ENOUGH_DATA when nothing was collected or a row lacks entries, FAILURE for a peak
        no fit can describe. Records the entries in ``metrics`` (``<entries>``,
        ``min_peak_<entries>``).
        """
        if self.key not in data:
            metrics[self.entries] = 0
            return not_enough_data(f"no {self.entries} collected", metrics)
        counts, edges = histogram_rows(data[self.key], self.axis)
        in_peak = counts_near_peak(counts, edges, self.check_half_width)
        metrics[self.entries] = float(counts.sum())
        metrics[f"min_peak_{self.entries}"] = float(in_peak.min())
        rows = f"{self.row}(s)"
        lacking = too_few(in_peak, self.minimum, rows, f"{self.entries} in their peak", metrics)
        if lacking is not None:
            return lacking
        peaks = peak_positions(counts, edges)
        windows = np.column_stack([peaks - self.fit_half_width, peaks + self.fit_half_width])
        guesses = np.full(len(peaks), self.sigma_guess)
        fits = fit_rows(counts, edges, windows, self.background, guesses)
        problem = fit_problem(fits, self.row, self.first_label, self.entries, metrics)
        return problem if problem is not None else fits
