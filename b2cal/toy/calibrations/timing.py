"""ChannelT0: the time offset of each of the 64 channels, from bhabha hit times.

Signal hits of a channel form a Gaussian peak at its t0 on a flat background of random hits.
The collector keeps one channel × time histogram per run (small, and it merges by addition);
the algorithm first checks cheaply that every channel has a peak with enough hits (the
sequential strategy merges a run that has not with the next one), then fits each peak. A peak
whose fit does not converge even after the retries of ``peak_fit`` also answers NOT_ENOUGH_DATA,
so that run is merged too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import hist
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
)
from b2cal.toy.calibrations.common import (
    Checks,
    RowPeaks,
    float_column,
    int_column,
    payloads_named,
    vector_field,
)
from b2cal.toy.calibrations.peak_fit import Background
from b2cal.toy.model import BACKGROUND_TIME_RANGE_NS, NUM_CHANNELS, TIME_RESOLUTION_NS

NAME = "ChannelT0"
#: Half width of a channel's signal region around its peak (docs/toy-detector.md), ns.
SIGNAL_WINDOW_NS = 7.5
#: Hits a channel needs in its signal region before its t0 is fitted (docs/toy-detector.md).
MIN_PEAK_HITS = 50
#: Time bins: 0.5 ns (a third of the resolution; the fit integrates the model over each bin).
TIME_BINS = 400
#: Half width of the fit window around the peak bin: wide enough (10 sigma) that the flat
#: background under the peak is measured from the sidebands.
FIT_HALF_WIDTH_NS = 15.0
#: t0 values outside this range (ns) fail validation: the readout window is ±100 ns.
PLAUSIBLE_T0_NS = (-100.0, 100.0)


def hit_time_histogram() -> Any:
    """An empty channel × hit-time histogram (64 × 400 bins of float64, about 200 kB)."""
    return hist.Hist(
        hist.axis.Integer(0, NUM_CHANNELS, name="channel", underflow=False, overflow=False),
        hist.axis.Regular(TIME_BINS, *BACKGROUND_TIME_RANGE_NS, name="time", label="t [ns]"),
        storage=hist.storage.Double(),
    )


class ChannelT0Collector(Collector):
    """Histograms every hit's time by channel."""

    branches = ("hit_channel", "hit_time")

    def process(self, events: Events, run: RunContext) -> Accumulator:
        hits = hit_time_histogram()
        hits.fill(channel=int_column(events, "hit_channel"), time=float_column(events, "hit_time"))
        return Accumulator(hits=hits)


#: Each channel's hit-time peak: checked within the signal window, fitted over a wider one.
TIME_PEAKS = RowPeaks(
    key="hits",
    axis="time",
    check_half_width=SIGNAL_WINDOW_NS,
    fit_half_width=FIT_HALF_WIDTH_NS,
    minimum=MIN_PEAK_HITS,
    background=Background.FLAT,
    sigma_guess=TIME_RESOLUTION_NS,
    row="channel",
    first_label=0,
    entries="hits",
)


class ChannelT0Settings(ExpertSettings):
    """What an expert may tune (``caf run --config``, section ``[ChannelT0.settings]``)."""

    collector_fields = ()  # all of them are the algorithm's

    #: Hits every channel needs within ``SIGNAL_WINDOW_NS`` of its peak before the t0 of an
    #: IoV is fitted; a run with fewer is merged with the next one.
    min_peak_hits: int = Field(default=MIN_PEAK_HITS, ge=1)


class ChannelT0Algorithm(Algorithm):
    """Fits each channel's time peak (Gaussian on flat background) once all have enough hits."""

    def execute(self, data: Accumulator, context: AlgorithmContext) -> Execution:
        metrics: dict[str, Any] = {}
        settings = ChannelT0Settings.of(context)
        fits = replace(TIME_PEAKS, minimum=settings.min_peak_hits).fit(data, metrics)
        if isinstance(fits, Execution):
            return fits
        metrics["resolution_mean_ns"] = float(fits.sigmas.mean())
        metrics["t0_err_max_ns"] = float(fits.errors.max())
        payload = {"t0": as_float_list(fits.means), "t0_err": as_float_list(fits.errors)}
        return Execution(AlgorithmResult.OK, payloads={NAME: payload}, metrics=metrics)


def validate_channel_t0(payloads: Mapping[str, Sequence[PayloadDoc]]) -> ValidationReport:
    """Every IoV: 64 finite t0 inside the readout window, with positive finite uncertainties."""
    checks = Checks()
    docs = payloads_named(payloads, NAME, checks)
    errors: list[float] = []
    for doc in docs:
        checks.within("t0", vector_field(doc, "t0", NUM_CHANNELS, checks), *PLAUSIBLE_T0_NS)
        doc_errors = vector_field(doc, "t0_err", NUM_CHANNELS, checks)
        checks.positive("t0_err", doc_errors)
        errors.extend(doc_errors)
    metrics = {"iovs": len(docs), "t0_err_max_ns": max(errors, default=float("nan"))}
    return checks.report(metrics)
