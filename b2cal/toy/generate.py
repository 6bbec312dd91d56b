"""Write toy detector data (contract: docs/toy-detector.md) and the truth that produced it.

The generator is the only source of data for closure tests, so it follows the generative model
to the letter and is reproducible: the truth comes from ``default_rng(seed)`` alone, and each
file from its own seed built of ``(seed, exp, run, stream, index)``. A file can therefore be
regenerated from ``truth.json`` (:func:`write_toy_file`) without generating anything else, and
adding runs or files never changes the data of the others. All sampling is vectorised over the
hits and tracks of a whole file.
"""

from __future__ import annotations

import bisect
import json
import os
import zlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import numpy.typing as npt
import uproot

from b2cal.catalog.naming import EVENTS_TREE, METADATA, data_file_path
from b2cal.errors import B2CalError
from b2cal.toy.model import (
    BACKGROUND_ADC_MEAN,
    BACKGROUND_TIME_RANGE_NS,
    BEAM_SIZE_CM,
    BEAMSPOT_RANGE_CM,
    DELTA_RANGE_UM,
    FIRST_TRACK_MODULE,
    GAIN_RANGE,
    HIT_BRANCHES,
    HITS_PER_EVENT_MEAN,
    LAST_TRACK_MODULE,
    NUM_CHANNELS,
    NUM_MODULES,
    OUTLIER_PROBABILITY,
    OUTLIER_RANGE_UM,
    POSITION_RESOLUTION_UM,
    SIGNAL_ADC_MEAN,
    SIGNAL_ADC_SIGMA,
    SIGNAL_FRACTION,
    STREAM_BHABHA,
    STREAM_MUMU,
    STREAMS,
    T0_RANGE_NS,
    TIME_RESOLUTION_NS,
    TRACK_BRANCHES,
    TRACK_X_RANGE_UM,
    TRACKS_PER_EVENT_MEAN,
    TRUTH_FILENAME,
    VERTEX_BRANCHES,
    VERTEX_RESOLUTION_CM,
    FloatArray,
    RunTruth,
    ToySettings,
    ToyTruth,
    vertex_x_shift_cm,
)

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Jagged:
    """Per-object columns of one file (flat, one value per hit or track) and per-event counts."""

    counts: IntArray
    columns: dict[str, npt.NDArray[Any]]


def planned_files(runs: Sequence[int], files_per_run: int) -> int:
    """How many files :func:`generate_toy` or :func:`write_toy_data` writes (both streams)."""
    return len(runs) * files_per_run * len(STREAMS)


def generate_toy(
    storage: Path,
    exp: int,
    runs: Sequence[int],
    *,
    files_per_run: int = 2,
    events: int = 2000,
    seed: int = 1,
    t0_jumps: Sequence[int] = (),
    beamspot_changes: Sequence[int] = (),
    low_stat: Mapping[int, int] | None = None,
    on_file: Callable[[Path], None] | None = None,
) -> ToyTruth:
    """Write ``files_per_run`` files per stream for every run, then ``<storage>/truth.json``.

    ``t0_jumps`` and ``beamspot_changes`` list the runs at which t0 (all channels) and the
    beam spot take new random values; ``low_stat`` maps runs to a smaller number of events
    per file. ``on_file`` is called with each file once it is complete. Every argument is
    checked before anything is written.
    """
    truth = draw_truth(
        exp,
        runs,
        seed=seed,
        settings=ToySettings(files_per_run, events, list(t0_jumps), list(beamspot_changes)),
        low_stat=low_stat,
    )
    write_toy_data(storage, truth, on_file)
    return truth


def write_toy_data(
    storage: Path, truth: ToyTruth, on_file: Callable[[Path], None] | None = None
) -> None:
    """Write every file of ``truth`` (from :func:`draw_truth`), then ``<storage>/truth.json``.

    The truth is written last, so its presence means the data set is complete.
    """
    for run in truth.runs:
        for stream in STREAMS:
            for index in range(truth.settings.files_per_run):
                path = write_toy_file(storage, truth, run, stream, index)
                if on_file is not None:
                    on_file(path)
    truth.write(Path(storage) / TRUTH_FILENAME)


def draw_truth(
    exp: int,
    runs: Sequence[int],
    *,
    seed: int,
    settings: ToySettings,
    low_stat: Mapping[int, int] | None = None,
) -> ToyTruth:
    """Draw the truth of a run range without writing anything; B2CalError for bad arguments.

    Values are drawn in a fixed order (gain, delta, then run by run a new t0 or beam spot
    where one starts), so the same arguments always give the same truth, and declaring a run
    low-statistics only changes which run's values it takes, never the values drawn.
    """
    low = dict(low_stat or {})
    ordered = _validated_runs(exp, runs)
    _validate_counts(low, seed)
    _require_in_range("t0 jump", settings.t0_jumps, ordered)
    _require_in_range("beam spot change", settings.beamspot_changes, ordered)
    _require_in_range("low-statistics run", list(low), ordered)

    rng = np.random.default_rng(seed)
    gain = rng.uniform(*GAIN_RANGE, NUM_CHANNELS)
    delta = np.zeros(NUM_MODULES)
    delta[FIRST_TRACK_MODULE : LAST_TRACK_MODULE + 1] = rng.uniform(
        *DELTA_RANGE_UM, LAST_TRACK_MODULE - FIRST_TRACK_MODULE + 1
    )
    drawn = _draw_run_truth(rng, ordered, settings)
    source = _truth_source(ordered, set(low))
    return ToyTruth(
        experiment=exp,
        runs=ordered,
        seed=seed,
        gain=[float(v) for v in gain],
        delta=[float(v) for v in delta],
        per_run={run: drawn[source[run]] for run in ordered},
        low_stat={run: low[run] for run in sorted(low)},
        settings=settings,
    )


def _draw_run_truth(
    rng: np.random.Generator, runs: list[int], settings: ToySettings
) -> dict[int, RunTruth]:
    """Per-run t0 and beam spot, new values only at the first run and at the requested runs."""
    t0_starts = {runs[0], *settings.t0_jumps}
    spot_starts = {runs[0], *settings.beamspot_changes}
    result: dict[int, RunTruth] = {}
    t0: list[float] = []
    spot = (0.0, 0.0, 0.0)
    for run in runs:
        if run in t0_starts:
            t0 = [float(v) for v in rng.uniform(*T0_RANGE_NS, NUM_CHANNELS)]
        if run in spot_starts:
            x, y, z = (float(rng.uniform(low, high)) for low, high in BEAMSPOT_RANGE_CM)
            spot = (x, y, z)
        result[run] = RunTruth(t0=t0, beamspot=spot)
    return result


def _truth_source(runs: list[int], low: set[int]) -> dict[int, int]:
    """The run whose truth each run takes.

    A low-statistics run is merged by the calibrations with the next run (the previous one at
    the end of the range), so it must share that run's truth: it takes the nearest following
    normal run's, else the nearest preceding one's. If every run is low-statistics they all
    end up in one IoV and take the first run's truth.
    """
    normal = [run for run in runs if run not in low]
    if not normal:
        return dict.fromkeys(runs, runs[0])
    source = {}
    for run in runs:
        position = bisect.bisect_left(normal, run)
        source[run] = normal[position] if position < len(normal) else normal[-1]
    return source


def write_toy_file(storage: Path, truth: ToyTruth, run: int, stream: str, index: int) -> Path:
    """Write (or rewrite, with the same data) file ``index`` of ``stream`` for ``run``.

    The file is written under a hidden temporary name and renamed, so a data scanner never
    picks up a half-written file.
    """
    simulate = _STREAM_CONTENT.get(stream)
    if simulate is None:
        raise B2CalError(f"unknown toy stream {stream!r} (streams: {', '.join(STREAMS)})")
    n_events = truth.events_per_file(run)
    rng = np.random.default_rng(_file_seed(truth, run, stream, index))
    branches = simulate(rng, n_events, truth, run)
    metadata = {
        "experiment": truth.experiment,
        "run": run,
        "stream": stream,
        "nevents": n_events,
        "file_index": index,
        "seed": truth.seed,
        "generator": "b2cal.toy",
    }
    path = data_file_path(storage, truth.experiment, run, stream, index)
    _write_root(path, branches, metadata)
    return path


def _bhabha_branches(
    rng: np.random.Generator, n_events: int, truth: ToyTruth, run: int
) -> dict[str, Any]:
    return _awkward_branches(simulate_hits(rng, n_events, truth.t0(run), truth.gain_array()))


def _mumu_branches(
    rng: np.random.Generator, n_events: int, truth: ToyTruth, run: int
) -> dict[str, Any]:
    branches = _awkward_branches(simulate_tracks(rng, n_events, truth.delta_array()))
    vertices = simulate_vertices(rng, n_events, truth.beamspot(run), truth.delta_array())
    branches.update({name: values.astype(np.float32) for name, values in vertices.items()})
    return branches


_STREAM_CONTENT: dict[str, Callable[[np.random.Generator, int, ToyTruth, int], dict[str, Any]]] = {
    STREAM_BHABHA: _bhabha_branches,
    STREAM_MUMU: _mumu_branches,
}


def _file_seed(truth: ToyTruth, run: int, stream: str, index: int) -> np.random.SeedSequence:
    # crc32 of the name, not its position in STREAMS, so adding a stream keeps the others' data.
    stream_key = zlib.crc32(stream.encode())
    return np.random.SeedSequence([truth.seed, truth.experiment, run, stream_key, index])


def simulate_hits(
    rng: np.random.Generator, n_events: int, t0: FloatArray, gain: FloatArray
) -> Jagged:
    """Hits of ``n_events`` bhabha events: a signal peak at t0 on flat background."""
    counts = rng.poisson(HITS_PER_EVENT_MEAN, n_events)
    total = int(counts.sum())
    channel = rng.integers(0, NUM_CHANNELS, total)
    signal = rng.random(total) < SIGNAL_FRACTION
    n_signal = int(signal.sum())
    time = np.empty(total)
    time[signal] = t0[channel[signal]] + rng.normal(0.0, TIME_RESOLUTION_NS, n_signal)
    time[~signal] = rng.uniform(*BACKGROUND_TIME_RANGE_NS, total - n_signal)
    pulse = np.empty(total)
    pulse[signal] = rng.normal(SIGNAL_ADC_MEAN, SIGNAL_ADC_SIGMA, n_signal)
    pulse[~signal] = rng.exponential(BACKGROUND_ADC_MEAN, total - n_signal)
    columns = dict(zip(HIT_BRANCHES, (channel, time, gain[channel] * pulse), strict=True))
    return Jagged(counts, columns)


def simulate_tracks(rng: np.random.Generator, n_events: int, delta: FloatArray) -> Jagged:
    """Tracks of ``n_events`` mumu events: three measurements each, with rare outliers."""
    counts = rng.poisson(TRACKS_PER_EVENT_MEAN, n_events)
    total = int(counts.sum())
    middle = rng.integers(FIRST_TRACK_MODULE, LAST_TRACK_MODULE + 1, total)
    x = rng.uniform(*TRACK_X_RANGE_UM, total)
    modules = middle[:, np.newaxis] + np.array([-1, 0, 1])
    u = x[:, np.newaxis] - delta[modules] + rng.normal(0.0, POSITION_RESOLUTION_UM, (total, 3))
    outlier = np.flatnonzero(rng.random(total) < OUTLIER_PROBABILITY)
    which = rng.integers(0, 3, outlier.size)
    u[outlier, which] = rng.uniform(*OUTLIER_RANGE_UM, outlier.size)
    columns = dict(zip(TRACK_BRANCHES, (middle, u[:, 0], u[:, 1], u[:, 2]), strict=True))
    return Jagged(counts, columns)


def simulate_vertices(
    rng: np.random.Generator,
    n_events: int,
    beamspot: tuple[float, float, float],
    delta: FloatArray,
) -> dict[str, FloatArray]:
    """One reconstructed vertex per event: beam spread, resolution and the alignment shift."""
    true = np.asarray(beamspot) + rng.normal(0.0, BEAM_SIZE_CM, (n_events, 3))
    measured = true + rng.normal(0.0, VERTEX_RESOLUTION_CM, (n_events, 3))
    measured[:, 0] += vertex_x_shift_cm(delta)
    return {name: measured[:, axis] for axis, name in enumerate(VERTEX_BRANCHES)}


def _awkward_branches(jagged: Jagged) -> dict[str, Any]:
    """One record array named by the common prefix (``hit``/``trk``) of the branch names.

    uproot writes a record ``hit`` with field ``time`` as branch ``hit_time`` and adds one
    shared counter branch ``nhit``.
    """
    prefixes = {name.split("_", 1)[0] for name in jagged.columns}
    if len(prefixes) != 1:
        raise ValueError(f"branches of one record need one prefix, got {sorted(prefixes)}")
    fields = {
        name.split("_", 1)[1]: ak.unflatten(_as_float32_or_int32(values), jagged.counts)
        for name, values in jagged.columns.items()
    }
    return {prefixes.pop(): ak.zip(fields)}


def _as_float32_or_int32(values: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """The contract's storage types: int32 for integers, float32 for reals."""
    if np.issubdtype(values.dtype, np.integer):
        return values.astype(np.int32)
    return values.astype(np.float32)


def _write_root(path: Path, branches: dict[str, Any], metadata: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.part")
    try:
        with uproot.recreate(partial) as out:
            # mktree, not ``out[name] = ...``: recent uproot writes RNTuples for the latter.
            tree = out.mktree(EVENTS_TREE, {name: _branch_type(v) for name, v in branches.items()})
            tree.extend(branches)
            out[METADATA] = json.dumps(metadata, sort_keys=True)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _branch_type(values: Any) -> Any:
    return values.dtype if isinstance(values, np.ndarray) else values.type


def _validated_runs(exp: int, runs: Sequence[int]) -> list[int]:
    if exp < 0:
        raise B2CalError(f"the experiment number must be >= 0, not {exp}")
    if len(runs) == 0:
        raise B2CalError("no runs given: the toy detector needs at least one run")
    negative = sorted(run for run in runs if run < 0)
    if negative:
        raise B2CalError(f"run numbers must be >= 0, got {negative}")
    repeated = sorted(run for run, n in Counter(runs).items() if n > 1)
    if repeated:
        raise B2CalError(f"runs given more than once: {repeated}")
    return sorted(runs)


def _validate_counts(low: Mapping[int, int], seed: int) -> None:
    bad = {run: n for run, n in low.items() if n < 0}
    if bad:
        raise B2CalError(f"low-statistics event counts must be >= 0, got {bad}")
    if seed < 0:
        raise B2CalError(f"the seed must be >= 0, not {seed}")


def _require_in_range(what: str, requested: Sequence[int], runs: list[int]) -> None:
    outside = sorted(set(requested) - set(runs))
    if outside:
        raise B2CalError(f"{what} at run(s) {outside} outside the generated runs {_describe(runs)}")


def _describe(runs: list[int]) -> str:
    if runs[-1] - runs[0] + 1 == len(runs):
        return f"{runs[0]}-{runs[-1]}"
    return ", ".join(str(run) for run in runs)
