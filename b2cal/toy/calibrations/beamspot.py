"""BeamSpot: the mean interaction point (x, y, z) per IoV, from mumu event vertices.

Misalignment moves reconstructed vertices in x by ``mean(delta[1..14]) * 1e-5`` cm, so the
collector removes the shift predicted by the ModuleAlignment constants valid for the run, and
the x uncertainty carries the uncertainty of that correction. That correction is common to all
vertices (it does not average away) and the constants are strongly correlated, so it is
propagated with the full alignment covariance, not the per-module errors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import Field

from b2cal.caf import (
    Algorithm,
    AlgorithmContext,
    AlgorithmResult,
    Collector,
    Events,
    Execution,
    ExpertSettings,
    PayloadDoc,
    RunContext,
    ValidationReport,
    as_float_list,
)
from b2cal.caf.accumulator import Accumulator, Column
from b2cal.toy.calibrations.alignment import FREE_MODULES
from b2cal.toy.calibrations.alignment import NAME as ALIGNMENT
from b2cal.toy.calibrations.common import (
    Checks,
    float_column,
    not_enough_data,
    payloads_named,
    scalar_field,
    upstream_payload,
)
from b2cal.toy.model import (
    NUM_MODULES,
    VERTEX_BRANCHES,
    VERTEX_SHIFT_PER_UM_CM,
    FloatArray,
    vertex_x_shift_cm,
)

NAME = "BeamSpot"
#: Vertices an IoV needs (docs/toy-detector.md).
MIN_VERTICES = 500
#: Positions outside these ranges (cm) fail validation: far outside the beam pipe's centre.
PLAUSIBLE_RANGE_CM = {"x": (-1.0, 1.0), "y": (-1.0, 1.0), "z": (-10.0, 10.0)}
#: Payload fields, in vertex column order.
AXES = ("x", "y", "z")


def vertex_shift_error_cm(du_cov: FloatArray) -> float:
    """Uncertainty (cm) of the vertex x shift ``mean(du[1..14]) * 1e-5`` from ``du_cov`` (µm²).

    The variance of a mean of correlated constants is ``1ᵀ C 1 / n²`` over the modules averaged.
    """
    free = FREE_MODULES
    variance = float(du_cov[np.ix_(free, free)].sum()) / free.size**2
    return math.sqrt(max(variance, 0.0)) * VERTEX_SHIFT_PER_UM_CM


class BeamSpotCollector(Collector):
    """Keeps every vertex, x corrected for the alignment, and the correction's uncertainty.

    Vertices are kept as float32 (12 bytes each, like the input branches): rounding them moves
    a position by less than 1e-7 cm, far below the resolution.

    ``x_shift_error_sum`` adds up, vertex by vertex, the uncertainty of the correction applied
    to it; divided by the number of vertices it is the (fully correlated) uncertainty of their
    mean, whatever mix of runs and alignment payloads the merged data holds.
    """

    branches = VERTEX_BRANCHES

    def process(self, events: Events, run: RunContext) -> Accumulator:
        alignment = upstream_payload(
            run, ALIGNMENT, NAME, {"du": NUM_MODULES, "du_cov": NUM_MODULES**2}
        )
        du_cov = alignment["du_cov"].reshape(NUM_MODULES, NUM_MODULES)
        x, y, z = (float_column(events, branch) for branch in VERTEX_BRANCHES)
        x = x - vertex_x_shift_cm(alignment["du"])
        return Accumulator(
            vertices=Column(np.column_stack([x, y, z]).astype(np.float32)),
            x_shift_error_sum=len(x) * vertex_shift_error_cm(du_cov),
        )


class BeamSpotSettings(ExpertSettings):
    """What an expert may tune (``caf run --config``, section ``[BeamSpot.settings]``)."""

    collector_fields = ()  # all of them are the algorithm's

    #: Vertices an IoV needs; a run with fewer is merged with the next one.
    min_vertices: int = Field(default=MIN_VERTICES, ge=2)


class BeamSpotAlgorithm(Algorithm):
    """Mean vertex position; statistical errors std/sqrt(n), plus the alignment error in x."""

    def execute(self, data: Accumulator, context: AlgorithmContext) -> Execution:
        stored = data["vertices"].values if "vertices" in data else np.empty((0, 3))
        vertices = np.asarray(stored, dtype=np.float64)
        count = len(vertices)
        metrics: dict[str, Any] = {"vertices": count}
        minimum = BeamSpotSettings.of(context).min_vertices
        if count < minimum:
            return not_enough_data(f"{count} vertices, {minimum} needed", metrics)
        position = vertices.mean(axis=0)
        spread = vertices.std(axis=0, ddof=1)
        errors = spread / math.sqrt(count)
        shift_error = float(data["x_shift_error_sum"]) / count
        metrics.update(
            x_stat_err_cm=float(errors[0]),
            x_alignment_err_cm=shift_error,
            **{f"{axis}_spread_cm": float(value) for axis, value in zip(AXES, spread, strict=True)},
        )
        errors[0] = math.hypot(errors[0], shift_error)
        payload: PayloadDoc = dict(zip(AXES, as_float_list(position), strict=True))
        payload.update(zip([f"{axis}_err" for axis in AXES], as_float_list(errors), strict=True))
        return Execution(AlgorithmResult.OK, payloads={NAME: payload}, metrics=metrics)


def validate_beam_spot(payloads: Mapping[str, Sequence[PayloadDoc]]) -> ValidationReport:
    """Every IoV: finite positions in a plausible range with positive finite uncertainties."""
    checks = Checks()
    docs = payloads_named(payloads, NAME, checks)
    positions: dict[str, list[float]] = {axis: [] for axis in AXES}
    for doc in docs:
        for axis in AXES:
            value = scalar_field(doc, axis, checks)
            error = scalar_field(doc, f"{axis}_err", checks)
            if value is not None:
                checks.within(axis, [value], *PLAUSIBLE_RANGE_CM[axis])
                positions[axis].append(value)
            if error is not None:
                checks.positive(f"{axis}_err", [error])
    metrics: dict[str, Any] = {"iovs": len(docs)}
    for axis, values in positions.items():
        metrics[f"{axis}_range_cm"] = max(values) - min(values) if values else math.nan
    return checks.report(metrics)
