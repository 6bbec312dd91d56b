"""ModuleAlignment: the position offsets ``du`` of the 16 modules, from mumu track residuals.

A track's residual on its middle module m compares that module with the mean of its two
neighbours, so the mean residual of module m measures ``e[m] - (e[m-1] + e[m+1]) / 2`` with
``e = a - delta`` the error of the constants ``a`` used. Modules 0 and 15 are fixed at zero: they
remove the global shift and shear, which residuals cannot see. Updating each module on its own
would converge very slowly (the modules are coupled), so every iteration solves the whole
14-module system at once; the next collection, with the new constants, checks the result.
Outlier measurements put wide tails under each residual peak, so the mean residual of each
module is the position of a fitted peak, not a plain mean.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import hist
import numpy as np
from pydantic import Field

from b2cal.caf import (
    Accumulator,
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
    as_float_matrix,
)
from b2cal.toy.calibrations.common import (
    Checks,
    RowPeaks,
    float_column,
    int_column,
    payload_vector,
    payloads_named,
    vector_field,
)
from b2cal.toy.calibrations.peak_fit import Background
from b2cal.toy.model import (
    FIRST_TRACK_MODULE,
    LAST_TRACK_MODULE,
    NUM_MODULES,
    POSITION_RESOLUTION_UM,
    REFERENCE_MODULES,
    FloatArray,
)

NAME = "ModuleAlignment"
#: Modules whose constants are fitted (the middle modules of tracks).
FREE_MODULES = np.arange(FIRST_TRACK_MODULE, LAST_TRACK_MODULE + 1)
#: The rows and columns of ``du_cov`` that belong to the fitted modules.
_FREE_BLOCK = np.ix_(FREE_MODULES, FREE_MODULES)
#: Residual axis, µm: 1200 bins of 2 µm. Before the first iteration residual peaks sit up to
#: ~500 µm from zero (misalignments reach 250 µm); the resolution is ~18 µm.
RESIDUAL_BINS = 1200
RESIDUAL_RANGE_UM = (-1200.0, 1200.0)
#: Resolution of a residual: one measurement minus the mean of two others.
RESIDUAL_RESOLUTION_UM = POSITION_RESOLUTION_UM * math.sqrt(1.5)
#: Half width of the fit window around a module's peak bin (about 5.4 resolutions), µm.
FIT_HALF_WIDTH_UM = 100.0
#: Tracks a module needs in its fit window.
MIN_MODULE_TRACKS = 100
#: Iterate while some constant moves by this much or more, µm (docs/toy-detector.md).
CONVERGENCE_UM = 1.0
#: Constants outside this range fail validation, µm.
PLAUSIBLE_DU_UM = (-1000.0, 1000.0)


def residual_histogram() -> Any:
    """An empty middle-module × residual histogram (14 × 1200 bins of float64, about 135 kB)."""
    return hist.Hist(
        hist.axis.Integer(
            FIRST_TRACK_MODULE,
            LAST_TRACK_MODULE + 1,
            name="module",
            underflow=False,
            overflow=False,
        ),
        hist.axis.Regular(RESIDUAL_BINS, *RESIDUAL_RANGE_UM, name="residual", label="r [µm]"),
        storage=hist.storage.Double(),
    )


def alignment_constants(doc: PayloadDoc | None) -> FloatArray:
    """The 16 constants of a ModuleAlignment payload (zeros without one), reference modules 0.

    Collector and algorithm both read the previous constants through this, so they agree.
    """
    if doc is None:
        return np.zeros(NUM_MODULES)
    constants = payload_vector(doc, NAME, "du", NUM_MODULES).copy()
    constants[list(REFERENCE_MODULES)] = 0.0
    return constants


def coupling_matrix() -> FloatArray:
    """``A`` with ``mean residual = A @ e[1..14]``: 1 on the diagonal, -1/2 beside it.

    The terms of modules 0 and 15 drop out because their error is zero by definition.
    """
    size = FREE_MODULES.size
    off_diagonal = np.full(size - 1, -0.5)
    matrix: FloatArray = np.eye(size) + np.diag(off_diagonal, 1) + np.diag(off_diagonal, -1)
    return matrix


class ModuleAlignmentCollector(Collector):
    """Histograms each track's residual on its middle module, under the current constants."""

    branches = ("trk_module", "trk_u_prev", "trk_u", "trk_u_next")

    def process(self, events: Events, run: RunContext) -> Accumulator:
        constants = alignment_constants(run.payload(NAME))
        module = int_column(events, "trk_module")
        here = float_column(events, "trk_u") + constants[module]
        before = float_column(events, "trk_u_prev") + constants[module - 1]
        after = float_column(events, "trk_u_next") + constants[module + 1]
        residuals = residual_histogram()
        residuals.fill(module=module, residual=here - 0.5 * (before + after))
        return Accumulator(residuals=residuals)


#: Each module's residual peak, checked and fitted over the same window.
RESIDUAL_PEAKS = RowPeaks(
    key="residuals",
    axis="residual",
    check_half_width=FIT_HALF_WIDTH_UM,
    fit_half_width=FIT_HALF_WIDTH_UM,
    minimum=MIN_MODULE_TRACKS,
    background=Background.FLAT,
    sigma_guess=RESIDUAL_RESOLUTION_UM,
    row="module",
    first_label=FIRST_TRACK_MODULE,
    entries="tracks",
)


class ModuleAlignmentSettings(ExpertSettings):
    """What an expert may tune (``caf run --config``, section ``[ModuleAlignment.settings]``)."""

    collector_fields = ()  # all of them are the algorithm's

    #: Iterate while some constant moves by this many µm or more.
    convergence_um: float = Field(default=CONVERGENCE_UM, gt=0)
    #: Tracks every module needs in its fit window.
    min_module_tracks: int = Field(default=MIN_MODULE_TRACKS, ge=1)


class ModuleAlignmentAlgorithm(Algorithm):
    """Fits each module's residual peak, then solves the coupled system for new constants."""

    def execute(self, data: Accumulator, context: AlgorithmContext) -> Execution:
        metrics: dict[str, Any] = {}
        settings = ModuleAlignmentSettings.of(context)
        fits = replace(RESIDUAL_PEAKS, minimum=settings.min_module_tracks).fit(data, metrics)
        if isinstance(fits, Execution):
            return fits
        previous = alignment_constants(context.payload(NAME))
        payload, largest = corrected_constants(previous, fits.means, fits.errors)
        metrics.update(
            largest_change_um=largest,
            residual_resolution_mean_um=float(fits.sigmas.mean()),
            du_err_max_um=max(payload["du_err"]),
        )
        converged = largest < settings.convergence_um
        result = AlgorithmResult.OK if converged else AlgorithmResult.ITERATE
        return Execution(result, payloads={NAME: payload}, metrics=metrics)


def corrected_constants(
    previous: FloatArray, mean_residuals: FloatArray, errors: FloatArray
) -> tuple[PayloadDoc, float]:
    """New constants ``previous - A⁻¹ r`` with covariance ``A⁻¹ diag(σ²) A⁻¹``, largest change.

    The previous constants are exact numbers (the residuals were computed with them), so all
    the uncertainty comes from the mean residuals of this collection.
    """
    inverse = np.linalg.inv(coupling_matrix())
    correction = inverse @ mean_residuals
    covariance = inverse @ np.diag(errors**2) @ inverse.T
    du = previous.copy()
    du[FREE_MODULES] -= correction
    du_cov = np.zeros((NUM_MODULES, NUM_MODULES))
    du_cov[_FREE_BLOCK] = 0.5 * (covariance + covariance.T)
    payload = {
        "du": as_float_list(du),
        "du_err": as_float_list(np.sqrt(np.diag(du_cov))),
        "du_cov": as_float_matrix(du_cov),
    }
    return payload, float(np.max(np.abs(correction)))


def validate_module_alignment(payloads: Mapping[str, Sequence[PayloadDoc]]) -> ValidationReport:
    """Constants in range, zero on the reference modules, covariance symmetric and PSD."""
    checks = Checks()
    docs = payloads_named(payloads, NAME, checks)
    eigenvalues: list[float] = []
    largest_error = 0.0
    for doc in docs:
        du = vector_field(doc, "du", NUM_MODULES, checks)
        errors = vector_field(doc, "du_err", NUM_MODULES, checks)
        checks.within("du", du, *PLAUSIBLE_DU_UM)
        checks.positive("du_err of modules 1..14", [errors[m] for m in FREE_MODULES if errors])
        fixed = [abs(values[m]) for values in (du, errors) if values for m in REFERENCE_MODULES]
        checks.require(not any(fixed), "reference modules 0 and 15 must have du = du_err = 0")
        covariance = _checked_covariance(doc, errors, checks)
        if covariance is not None:
            eigenvalues.append(float(np.linalg.eigvalsh(covariance[_FREE_BLOCK]).min()))
        largest_error = max([largest_error, *errors])
    metrics = {
        "iovs": len(docs),
        "du_err_max_um": largest_error,
        "du_cov_min_eigenvalue_um2": min(eigenvalues, default=math.nan),
    }
    return checks.report(metrics)


def _checked_covariance(doc: PayloadDoc, errors: list[float], checks: Checks) -> FloatArray | None:
    """``du_cov`` as an array if it is a finite 16×16 matrix, else None.

    Also checks that it is symmetric, positive semi-definite, zero in the rows and columns of
    the reference modules, and that its diagonal is ``du_err²``.
    """
    try:
        cov = np.asarray(doc.get("du_cov"), dtype=np.float64)
    except (TypeError, ValueError):
        cov = np.empty(0)
    if cov.shape != (NUM_MODULES, NUM_MODULES) or not np.all(np.isfinite(cov)):
        checks.require(False, "du_cov is not a finite 16×16 matrix")
        return None
    tolerance = 1e-9 * float(np.max(np.abs(cov), initial=0.0))
    checks.require(bool(np.all(np.abs(cov - cov.T) <= tolerance)), "du_cov asymmetric")
    checks.require(
        float(np.linalg.eigvalsh(cov).min()) >= -tolerance, "du_cov not positive semi-definite"
    )
    reference = list(REFERENCE_MODULES)
    checks.require(
        not np.any(cov[reference, :]) and not np.any(cov[:, reference]),
        "du_cov must be zero in the rows and columns of modules 0 and 15",
    )
    if errors:
        diagonal_ok = np.allclose(np.sqrt(np.diag(cov)), errors, rtol=1e-9, atol=0.0)
        checks.require(bool(diagonal_ok), "du_err differs from sqrt(diag(du_cov))")
    return cov
