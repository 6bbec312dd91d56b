"""One Gaussian peak on a smooth background: the binned likelihood fit shared by three calibrations.

ChannelT0 (hit times), ChannelGain (pulse heights) and ModuleAlignment (track residuals) all
estimate the position of a Gaussian peak that sits on background. A plain mean is pulled by the
background, so each of them fits the histogram with an extended binned likelihood
(``iminuit.cost.ExtendedBinnedNLL``). The model is given as a cumulative distribution, so the
expected content of every bin is the exact integral over the bin: the fit stays unbiased for bins
a good fraction of the peak width, which keeps the collectors' histograms small.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from iminuit import Minuit
from iminuit.cost import ExtendedBinnedNLL

from b2cal.toy.model import FloatArray

_SQRT2 = math.sqrt(2.0)
#: ``math.erf`` over an array (numpy has no error function and scipy is not a dependency).
_ERF: Callable[[FloatArray], Any] = np.frompyfunc(math.erf, 1, 1)


class Background(enum.StrEnum):
    """Shapes of the background under the peak, each normalised to the fit window."""

    #: Uniform density: random hit times, and locally the wide outlier tails of residuals.
    FLAT = "flat"
    #: Falling exponential density: the pulse heights of background hits.
    EXPONENTIAL = "exponential"


@dataclass(frozen=True)
class PeakFit:
    """The fitted peak: position with its Hesse uncertainty, width, yields and fit health."""

    mean: float
    error: float
    sigma: float
    signal: float
    background: float
    valid: bool
    status: str


@dataclass(frozen=True)
class PeakFits:
    """The peak fits of the rows of a 2-D histogram (one per channel or module), in row order."""

    fits: tuple[PeakFit, ...]

    @property
    def means(self) -> FloatArray:
        return np.array([fit.mean for fit in self.fits])

    @property
    def errors(self) -> FloatArray:
        return np.array([fit.error for fit in self.fits])

    @property
    def sigmas(self) -> FloatArray:
        return np.array([fit.sigma for fit in self.fits])

    def failed(self) -> list[int]:
        """Rows whose fit is not valid."""
        return [row for row, fit in enumerate(self.fits) if not fit.valid]


def bin_centers(edges: FloatArray) -> FloatArray:
    """Centres of the bins delimited by ``edges``."""
    centers: FloatArray = 0.5 * (edges[1:] + edges[:-1])
    return centers


def peak_positions(counts: FloatArray, edges: FloatArray) -> FloatArray:
    """Centre of the most populated bin of each row of ``counts`` (first one on ties).

    Cheap enough to run before any fit, so algorithms use it for their data checks and to
    place the fit window.
    """
    positions: FloatArray = bin_centers(edges)[np.argmax(np.atleast_2d(counts), axis=1)]
    return positions


def counts_near_peak(counts: FloatArray, edges: FloatArray, half_width: float) -> FloatArray:
    """Entries of each row in the bins whose centres lie within ``half_width`` of its peak bin."""
    rows = np.atleast_2d(counts)
    near = np.abs(bin_centers(edges)[np.newaxis, :] - peak_positions(rows, edges)[:, np.newaxis])
    result: FloatArray = np.sum(rows, axis=1, where=near <= half_width)
    return result


def fit_peak(
    counts: FloatArray,
    edges: FloatArray,
    window: tuple[float, float],
    background: Background,
    sigma_guess: float,
) -> PeakFit:
    """Fit a Gaussian peak plus ``background`` to the bins of ``counts`` inside ``window``.

    ``window`` is widened to whole bins and clipped to the histogram; the peak is started at
    the most populated bin of the window with width ``sigma_guess`` (only a starting value).
    """
    counts, edges = _restrict(np.asarray(counts, np.float64), np.asarray(edges, np.float64), window)
    low, high = float(edges[0]), float(edges[-1])
    start = _start_values(counts, edges, sigma_guess, background)
    if len(counts) <= len(start):
        return _not_fitted(f"the fit window holds {len(counts)} bins, too few for the model")
    minuit = Minuit(ExtendedBinnedNLL(counts, edges, _MODELS[background](low, high)), **start)
    minuit.limits["n_sig"] = (0.0, None)
    minuit.limits["n_bkg"] = (0.0, None)
    minuit.limits["mu"] = (low, high)
    minuit.limits["sigma"] = (0.1 * float(np.min(np.diff(edges))), high - low)
    if background is Background.EXPONENTIAL:
        minuit.limits["decay"] = (1e-3 * (high - low), 1e3 * (high - low))
    return _result(minuit.migrad().hesse(), high - low)


def fit_rows(
    counts: FloatArray,
    edges: FloatArray,
    windows: FloatArray,
    background: Background,
    sigma_guesses: FloatArray,
) -> PeakFits:
    """:func:`fit_peak` on each row of ``counts``, with that row's window and starting width."""
    return PeakFits(
        tuple(
            fit_peak(row, edges, (float(low), float(high)), background, float(guess))
            for row, (low, high), guess in zip(counts, windows, sigma_guesses, strict=True)
        )
    )


def _restrict(
    counts: FloatArray, edges: FloatArray, window: tuple[float, float]
) -> tuple[FloatArray, FloatArray]:
    """The bins overlapping ``window`` (whole bins, so no bin is partly counted)."""
    bins = len(edges) - 1
    first = min(max(int(np.searchsorted(edges, window[0], side="right")) - 1, 0), bins - 1)
    last = max(min(int(np.searchsorted(edges, window[1], side="left")), bins), first + 1)
    return counts[first:last], edges[first : last + 1]


def _start_values(
    counts: FloatArray, edges: FloatArray, sigma_guess: float, background: Background
) -> dict[str, float]:
    """Starting point: background level from the outer quarters of the window, peak at its mode."""
    quarter = max(len(counts) // 4, 1)
    outer = np.concatenate([counts[:quarter], counts[-quarter:]])
    n_bkg = max(float(np.mean(outer)) * len(counts), 1.0)
    start = {
        "n_sig": max(float(np.sum(counts)) - n_bkg, 1.0),
        "mu": float(peak_positions(counts, edges)[0]),
        "sigma": sigma_guess,
        "n_bkg": n_bkg,
    }
    if background is Background.EXPONENTIAL:
        start["decay"] = 0.25 * float(edges[-1] - edges[0])
    return start


def _result(minuit: Minuit, window_width: float) -> PeakFit:
    error = float(minuit.errors["mu"])
    signal = float(minuit.values["n_sig"])
    failure = _failure_reason(minuit, error, signal, window_width)
    return PeakFit(
        mean=float(minuit.values["mu"]),
        error=error,
        sigma=float(minuit.values["sigma"]),
        signal=signal,
        background=float(minuit.values["n_bkg"]),
        valid=not failure,
        status=failure or "ok",
    )


def _not_fitted(reason: str) -> PeakFit:
    nan = math.nan
    return PeakFit(nan, nan, nan, nan, nan, valid=False, status=reason)


def _failure_reason(minuit: Minuit, error: float, signal: float, window_width: float) -> str:
    """Why the fit cannot be used, or "" if it can."""
    fmin = minuit.fmin
    if fmin is None:
        return "not minimised"
    if signal < 1.0:
        return "no peak in the fit window"
    if fmin.has_reached_call_limit:
        return "call limit reached"
    if fmin.is_above_max_edm:
        return "did not converge (EDM above tolerance)"
    if not fmin.has_posdef_covar:
        return "covariance not positive definite"
    if not (math.isfinite(error) and 0.0 < error < window_width):
        return "peak position not determined"
    return ""


def _gaussian_cdf(x: FloatArray, mu: float, sigma: float) -> FloatArray:
    result: FloatArray = 0.5 * (1.0 + _ERF((x - mu) / (sigma * _SQRT2)).astype(np.float64))
    return result


class _WindowModel:
    """A scaled CDF over the fit window ``[low, high]``; the background is normalised to it."""

    def __init__(self, low: float, high: float) -> None:
        self.low = low
        self.width = high - low


class _GaussFlat(_WindowModel):
    """A Gaussian (``n_sig`` entries in total) on ``n_bkg`` uniform entries in the window."""

    def __call__(
        self, x: FloatArray, n_sig: float, mu: float, sigma: float, n_bkg: float
    ) -> FloatArray:
        return n_sig * _gaussian_cdf(x, mu, sigma) + n_bkg * (x - self.low) / self.width


class _GaussExponential(_WindowModel):
    """A Gaussian on ``n_bkg`` entries of a falling exponential (scale ``decay``) in the window."""

    def __call__(
        self, x: FloatArray, n_sig: float, mu: float, sigma: float, n_bkg: float, decay: float
    ) -> FloatArray:
        fraction = np.expm1(-(x - self.low) / decay) / math.expm1(-self.width / decay)
        return n_sig * _gaussian_cdf(x, mu, sigma) + n_bkg * fraction


_MODELS: dict[Background, type[_GaussFlat] | type[_GaussExponential]] = {
    Background.FLAT: _GaussFlat,
    Background.EXPONENTIAL: _GaussExponential,
}
