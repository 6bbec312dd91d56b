"""A calibration's constants across buckets, and drift: a constant whose mean moves from one
bucket to the next by more than its tolerance (the site's ``drift_tolerance``) is flagged, so
an expert looks before signing off a jump that the pulls against one reference do not show.

Read from the validation summaries the state database keeps per calibration run (no payload
files are opened), so the trend of a hundred buckets is one query.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from b2cal.db.overview import TrendPoint


@dataclass(frozen=True)
class TrendValue:
    label: str
    calrun_id: int
    state: str
    field: str
    #: The mean of the field over the calibration run's IoVs.
    mean: float
    #: The change of ``mean`` from the previous point that has the field (None: the first).
    step: float | None
    drift: bool


def tolerance_of(calibration: str, field: str, tolerances: Mapping[str, float]) -> float | None:
    """``Calibration.field`` if configured, else ``Calibration``; None: never flagged.
    Validation names fields after their payload (``ChannelT0.t0``) or bare (``t0``)."""
    qualified = field if field.startswith(f"{calibration}.") else f"{calibration}.{field}"
    return tolerances.get(qualified, tolerances.get(calibration))


def _means(summary: Mapping[str, object] | None) -> dict[str, float]:
    """Field -> mean of its per-IoV means, from a validation summary."""
    sums: dict[str, tuple[float, int]] = {}
    for entry in (summary or {}).get("fields", []) or []:  # type: ignore[attr-defined]
        name, mean = entry.get("field"), entry.get("mean")
        if name is None or mean is None or mean != mean:  # NaN: no value
            continue
        total, count = sums.get(name, (0.0, 0))
        sums[name] = (total + float(mean), count + 1)
    return {name: total / count for name, (total, count) in sums.items()}


def trend(
    calibration: str, points: Sequence[TrendPoint], tolerances: Mapping[str, float]
) -> list[TrendValue]:
    """The means of every field per point, oldest first, each step checked for drift."""
    values: list[TrendValue] = []
    previous: dict[str, float] = {}
    for point in points:
        for name, mean in sorted(_means(point.calrun.summary).items()):
            step = mean - previous[name] if name in previous else None
            limit = tolerance_of(calibration, name, tolerances)
            drift = step is not None and limit is not None and abs(step) > limit
            values.append(
                TrendValue(
                    point.label, point.calrun.id, point.calrun.state.value, name, mean, step, drift
                )
            )
            previous[name] = mean
    return values
