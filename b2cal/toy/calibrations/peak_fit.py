"""One Gaussian peak on a smooth background: the binned likelihood fit shared by three calibrations.

ChannelT0 (hit times), ChannelGain (pulse heights) and ModuleAlignment (track residuals) all
estimate the position of a Gaussian peak that sits on background. A plain mean is pulled by the
background, so each of them fits the histogram with an extended binned likelihood
(``iminuit.cost.ExtendedBinnedNLL``). The model is given as a cumulative distribution, so the
expected content of every bin is the exact integral over the bin: the fit stays unbiased for bins
a good fraction of the peak width, which keeps the collectors' histograms small.

With modest statistics a single MIGRAD run does not always converge although the peak is
clear: with only a few background entries in the window the background yield runs to its limit
at zero, and the exponential's slope, which then no longer changes the likelihood, wanders off;
MIGRAD stalls with a large EDM or a singular covariance. :func:`fit_peak` therefore retries
(:data:`ATTEMPTS`): SIMPLEX before MIGRAD, then the exponential slope fixed at its starting
value. A retry runs only when the previous attempt failed, so well-populated histograms get
exactly the plain fit (same values, same Hesse uncertainties). A fit that still fails says
whether more data would help (:attr:`PeakFit.lacks_data`), so an algorithm can answer
NOT_ENOUGH_DATA instead of FAILURE.
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
#: Lower limit of the peak width, in bins: far below any real peak, so reaching it means a
#: spike (all entries in one bin), which the width check rejects.
_MIN_SIGMA_BINS = 0.1
#: A width within this factor of its lower limit counts as at the limit.
_AT_LIMIT = 1.01
#: A peak must lie this many widths inside the window on both sides: otherwise the window cut
#: it (it was placed badly) or the "peak" is the window's whole content.
_CONTAINED_SIGMAS = 2.0


class Background(enum.StrEnum):
    """Shapes of the background under the peak, each normalised to the fit window."""

    #: Uniform density: random hit times, and locally the wide outlier tails of residuals.
    FLAT = "flat"
    #: Falling exponential density: the pulse heights of background hits.
    EXPONENTIAL = "exponential"


@dataclass(frozen=True)
class PeakFit:
    """The fitted peak: position with its Hesse uncertainty, width, yields and fit health.

    ``entries`` is the content of the fit window, ``attempt`` the :data:`ATTEMPTS` entry that
    gave the result ("" if none ran). ``status`` is "ok" or why the fit cannot be used, and
    ``lacks_data`` says whether that is a matter of statistics (the likelihood does not pin
    the peak down) rather than of data that do not hold a peak in the window at all.
    """

    mean: float
    error: float
    sigma: float
    signal: float
    background: float
    entries: float
    attempt: str
    valid: bool
    status: str
    lacks_data: bool = False


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

    def retried(self) -> int:
        """How many valid fits needed more than the plain MIGRAD (reported as a metric)."""
        return sum(1 for fit in self.fits if fit.valid and fit.attempt != ATTEMPTS[0][0])


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
    The attempts of :data:`ATTEMPTS` run in turn until one gives a usable fit; otherwise the
    last one's problem is returned.
    """
    counts, edges = _restrict(np.asarray(counts, np.float64), np.asarray(edges, np.float64), window)
    entries = float(np.sum(counts))
    start = _start_values(counts, edges, sigma_guess, background)
    if len(counts) <= len(start):
        return _not_fitted(
            f"the fit window holds {len(counts)} bins, too few for the model", entries
        )
    minuit = _minuit(counts, edges, background, start)
    fit = _not_fitted("no fit attempt applies", entries)
    for name, attempt in ATTEMPTS:
        minuit.reset()
        if attempt(minuit, background):
            fit = _result(minuit.hesse(), name, entries)
            if fit.valid:
                break
    return fit


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


def _migrad(minuit: Minuit, background: Background) -> bool:
    """The plain fit from the data-driven starting values: all that well-filled peaks need."""
    minuit.migrad()
    return True


def _simplex_then_migrad(minuit: Minuit, background: Background) -> bool:
    """SIMPLEX first, then MIGRAD from where it ended, every parameter still free.

    SIMPLEX needs no derivatives, so it gets out of a flat or strongly curved region where
    MIGRAD's quadratic steps stall; MIGRAD then polishes the minimum and gives the covariance,
    so the uncertainties are those of the full model.
    """
    minuit.simplex().migrad()
    return True


def _background_shape_fixed(minuit: Minuit, background: Background) -> bool:
    """The exponential slope held at its starting value, with its yield still free.

    A handful of background entries cannot measure the slope, and at zero yield it has no
    effect at all, which is what stalls the first two attempts. The slope hardly correlates
    with the peak position (the background lies far below the peak), so fixing it changes the
    position's uncertainty negligibly. A flat background has no shape to fix.
    """
    if background is not Background.EXPONENTIAL:
        return False
    minuit.fixed["decay"] = True
    minuit.migrad()
    return True


#: The fit attempts in order, each run from the starting values only if the previous ones
#: failed. Dropping the background altogether is deliberately not among them: one stray entry
#: away from the peak would then have to be explained by the Gaussian and widen it.
ATTEMPTS: tuple[tuple[str, Callable[[Minuit, Background], bool]], ...] = (
    ("migrad", _migrad),
    ("simplex+migrad", _simplex_then_migrad),
    ("background shape fixed", _background_shape_fixed),
)


def _minuit(
    counts: FloatArray, edges: FloatArray, background: Background, start: dict[str, float]
) -> Minuit:
    """The extended binned likelihood of the model, started at ``start``, with limits.

    The limits keep the model meaningful where a stray step would break it: yields are not
    negative, the peak stays in the window, its width is neither far below a bin (a
    spike) nor wider than the window, and the exponential scale is within three orders of
    magnitude of the window.
    """
    low, high = float(edges[0]), float(edges[-1])
    minuit = Minuit(ExtendedBinnedNLL(counts, edges, _MODELS[background](low, high)), **start)
    minuit.limits["n_sig"] = (0.0, None)
    minuit.limits["n_bkg"] = (0.0, None)
    minuit.limits["mu"] = (low, high)
    minuit.limits["sigma"] = (_MIN_SIGMA_BINS * float(np.min(np.diff(edges))), high - low)
    if background is Background.EXPONENTIAL:
        minuit.limits["decay"] = (1e-3 * (high - low), 1e3 * (high - low))
    return minuit


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
    """Starting point: background level from the outer quarters of the window, peak at its mode.

    The width comes from the caller, who knows the resolution. The exponential starts with a
    scale of a quarter of the window: ChannelGain's window runs from zero to twice the peak
    and its background has a mean of half the gain, so that is the true scale, and the last
    attempt can hold the slope there without biasing anything.
    """
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


def _result(minuit: Minuit, attempt: str, entries: float) -> PeakFit:
    mean, error = float(minuit.values["mu"]), float(minuit.errors["mu"])
    sigma, signal = float(minuit.values["sigma"]), float(minuit.values["n_sig"])
    problem = _problem(minuit, mean, error, sigma, signal)
    return PeakFit(
        mean=mean,
        error=error,
        sigma=sigma,
        signal=signal,
        background=float(minuit.values["n_bkg"]),
        entries=entries,
        attempt=attempt,
        valid=problem is None,
        status=problem.text if problem else "ok",
        lacks_data=problem.lacks_data if problem else False,
    )


def _not_fitted(reason: str, entries: float) -> PeakFit:
    nan = math.nan
    return PeakFit(nan, nan, nan, nan, nan, entries, attempt="", valid=False, status=reason)


@dataclass(frozen=True)
class _Problem:
    """Why a fit cannot be used, and whether more data would help."""

    text: str
    lacks_data: bool


def _problem(
    minuit: Minuit, mean: float, error: float, sigma: float, signal: float
) -> _Problem | None:
    """Why the fit cannot be used, or None if it can.

    A window without a peak (empty, flat) is named as such first: its fit does not converge
    either, but more data would not help. Then the convergence checks: with a real peak, a
    likelihood that does not pin the minimum down is a matter of statistics. Last, a converged
    "peak" that is a spike in one bin, or that the window cuts, is not the peak sought.
    """
    fmin = minuit.fmin
    low, high = minuit.limits["mu"]
    if fmin is None:
        return _Problem("not minimised", lacks_data=False)
    if signal < 1.0:
        return _Problem("no peak in the fit window", lacks_data=False)
    if fmin.has_reached_call_limit:
        return _Problem("call limit reached", lacks_data=True)
    if fmin.is_above_max_edm:
        return _Problem("did not converge (EDM above tolerance)", lacks_data=True)
    if not fmin.has_posdef_covar:
        return _Problem("covariance not positive definite", lacks_data=True)
    if not (math.isfinite(error) and 0.0 < error < high - low):
        return _Problem("peak position not determined", lacks_data=True)
    if sigma <= _AT_LIMIT * minuit.limits["sigma"][0]:
        return _Problem("peak narrower than a bin (a spike, not a peak)", lacks_data=False)
    if not (low <= mean - _CONTAINED_SIGMAS * sigma and mean + _CONTAINED_SIGMAS * sigma <= high):
        return _Problem("peak not contained in the fit window", lacks_data=False)
    return None


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
