"""ChannelGain: the gain of each of the 64 channels, from the pulse height of bhabha signal hits.

Only hits close to the channel's t0 are signal, so the collector keeps the hits within 7.5 ns of
the ChannelT0 payload valid for each run. The ~0.8% background that survives the window has low,
exponentially falling pulse heights; it would bias a plain mean at the level of its statistical
error, so the algorithm fits the peak with an exponential background.

A wrong t0 does not bias this gain (the design's "a wrong t0 biases the gain" holds for a plain
mean, not for the fit): a signal hit's pulse height does not depend on its time, so a t0 that is
off only loses signal hits, which widens the uncertainty (NOT_ENOUGH_DATA once fewer than
``MIN_CHANNEL_HITS`` remain), and raises the background share, which the exponential takes up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
)
from b2cal.toy.calibrations.common import (
    Checks,
    fit_problem,
    float_column,
    histogram_rows,
    int_column,
    not_enough_data,
    payloads_named,
    too_few,
    upstream_payload,
    vector_field,
)
from b2cal.toy.calibrations.peak_fit import Background, fit_rows, peak_positions
from b2cal.toy.calibrations.timing import NAME as CHANNEL_T0
from b2cal.toy.calibrations.timing import SIGNAL_WINDOW_NS
from b2cal.toy.model import NUM_CHANNELS, SIGNAL_ADC_SIGMA, FloatArray

NAME = "ChannelGain"
#: Pulse-height axis: 400 bins of 0.01 over 0..4 (signal peaks lie near 0.7..1.3).
ADC_BINS = 400
ADC_RANGE = (0.0, 4.0)
#: Kept hits a channel needs before its peak is fitted.
MIN_CHANNEL_HITS = 100
#: Gains outside this range fail validation.
PLAUSIBLE_GAIN = (0.2, 3.0)


def adc_histogram() -> Any:
    """An empty channel × pulse-height histogram (64 × 400 bins of float64, about 200 kB)."""
    return hist.Hist(
        hist.axis.Integer(0, NUM_CHANNELS, name="channel", underflow=False, overflow=False),
        hist.axis.Regular(ADC_BINS, *ADC_RANGE, name="adc", label="pulse height"),
        storage=hist.storage.Double(),
    )


class ChannelGainSettings(ExpertSettings):
    """What an expert may tune (``caf run --config``, section ``[ChannelGain.settings]``)."""

    collector_fields = ("signal_window_ns",)

    #: Hits are kept when their time lies within this many ns of their channel's t0.
    signal_window_ns: float = Field(default=SIGNAL_WINDOW_NS, gt=0)
    #: Kept hits every channel needs before its gain is fitted.
    min_channel_hits: int = Field(default=MIN_CHANNEL_HITS, ge=1)


class ChannelGainCollector(Collector):
    """Histograms the pulse height of hits within the signal window around their channel's t0."""

    branches = ("hit_channel", "hit_time", "hit_adc")

    def process(self, events: Events, run: RunContext) -> Accumulator:
        t0 = upstream_payload(run, CHANNEL_T0, NAME, {"t0": NUM_CHANNELS})["t0"]
        channel = int_column(events, "hit_channel")
        window = ChannelGainSettings.of(run).signal_window_ns
        in_time = np.abs(float_column(events, "hit_time") - t0[channel]) < window
        adc = adc_histogram()
        adc.fill(channel=channel[in_time], adc=float_column(events, "hit_adc")[in_time])
        return Accumulator(adc=adc)


class ChannelGainAlgorithm(Algorithm):
    """Fits each channel's pulse-height peak on an exponential background."""

    def execute(self, data: Accumulator, context: AlgorithmContext) -> Execution:
        if "adc" not in data:
            return not_enough_data("no hits collected", {"hits": 0})
        counts, edges = histogram_rows(data["adc"], "adc")
        per_channel = counts.sum(axis=1)
        metrics: dict[str, Any] = {
            "hits": float(per_channel.sum()),
            "min_channel_hits": float(per_channel.min()),
        }
        minimum = ChannelGainSettings.of(context).min_channel_hits
        lacking = too_few(per_channel, minimum, "channel(s)", "hits near their t0", metrics)
        if lacking is not None:
            return lacking
        fits = fit_rows(counts, edges, *_fit_settings(counts, edges))
        problem = fit_problem(fits, "channel", 0, "hits", metrics)
        if problem is not None:
            return problem
        metrics["relative_resolution_mean"] = float(np.mean(fits.sigmas / fits.means))
        metrics["gain_err_max"] = float(fits.errors.max())
        payload = {"gain": as_float_list(fits.means), "gain_err": as_float_list(fits.errors)}
        return Execution(AlgorithmResult.OK, payloads={NAME: payload}, metrics=metrics)


def _fit_settings(
    counts: FloatArray, edges: FloatArray
) -> tuple[FloatArray, Background, FloatArray]:
    """Fit windows from zero to twice the peak, background shape and starting widths.

    The window takes in the whole low pulse-height region, where the background lives, so the
    data fix its exponential shape; and it reaches as far above the peak as below it.
    """
    peaks = peak_positions(counts, edges)
    windows = np.column_stack([np.full_like(peaks, ADC_RANGE[0]), 2.0 * peaks])
    return windows, Background.EXPONENTIAL, SIGNAL_ADC_SIGMA * peaks


def validate_channel_gain(payloads: Mapping[str, Sequence[PayloadDoc]]) -> ValidationReport:
    """Every IoV: 64 finite gains in a plausible range, with positive finite uncertainties."""
    checks = Checks()
    docs = payloads_named(payloads, NAME, checks)
    gains: list[float] = []
    for doc in docs:
        doc_gains = vector_field(doc, "gain", NUM_CHANNELS, checks)
        checks.within("gain", doc_gains, *PLAUSIBLE_GAIN)
        checks.positive("gain_err", vector_field(doc, "gain_err", NUM_CHANNELS, checks))
        gains.extend(doc_gains)
    metrics = {
        "iovs": len(docs),
        "gain_min": min(gains, default=float("nan")),
        "gain_max": max(gains, default=float("nan")),
    }
    return checks.report(metrics)
