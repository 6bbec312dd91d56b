"""The toy generator writes what docs/toy-detector.md promises, reproducibly, and its truth.json."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import pytest
import uproot
from hypothesis import given, settings
from hypothesis import strategies as st

from b2cal.catalog.naming import data_file_path
from b2cal.errors import B2CalError
from b2cal.toy.generate import draw_truth, generate_toy, planned_files, write_toy_file
from b2cal.toy.model import (
    BEAMSPOT_RANGE_CM,
    DELTA_RANGE_UM,
    GAIN_RANGE,
    HIT_BRANCHES,
    T0_RANGE_NS,
    TRACK_BRANCHES,
    TRUTH_FILENAME,
    VERTEX_BRANCHES,
    ToySettings,
    ToyTruth,
    vertex_x_shift_cm,
)

pytestmark = pytest.mark.unit

EXP = 3
RUNS = list(range(10, 16))
JUMPS = [12, 15]
SPOT_CHANGES = [14]


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ToyTruth, list[Path]]:
    storage = tmp_path_factory.mktemp("toy")
    written: list[Path] = []
    truth = generate_toy(
        storage,
        EXP,
        RUNS,
        files_per_run=2,
        events=40,
        seed=7,
        t0_jumps=JUMPS,
        beamspot_changes=SPOT_CHANGES,
        on_file=written.append,
    )
    return storage, truth, written


def read_tree(path: Path) -> Any:
    with uproot.open(path) as handle:
        return handle["events"].arrays(library="ak")


def test_file_names_follow_the_contract(toy: tuple[Path, ToyTruth, list[Path]]) -> None:
    storage, _, written = toy
    expected = {
        storage / f"e0003/r{run:05d}/{stream}/{stream}.e0003.r{run:05d}.f{index:05d}.root"
        for run in RUNS
        for stream in ("bhabha", "mumu")
        for index in (0, 1)
    }
    on_disk = {path for path in storage.rglob("*") if path.is_file()}
    assert on_disk == expected | {storage / TRUTH_FILENAME}
    assert set(written) == expected
    assert len(written) == planned_files(RUNS, 2) == 24


def test_toy_file_path() -> None:
    path = data_file_path(Path("s"), 1, 23, "mumu", 4)
    assert path == Path("s/e0001/r00023/mumu/mumu.e0001.r00023.f00004.root")


def test_branch_names_and_types(toy: tuple[Path, ToyTruth, list[Path]]) -> None:
    storage = toy[0]
    bhabha = read_tree(data_file_path(storage, EXP, 10, "bhabha", 0))
    mumu = read_tree(data_file_path(storage, EXP, 10, "mumu", 0))
    assert set(HIT_BRANCHES) <= set(bhabha.fields)
    assert set(TRACK_BRANCHES) | set(VERTEX_BRANCHES) <= set(mumu.fields)
    for arrays, names in ((bhabha, HIT_BRANCHES), (mumu, TRACK_BRANCHES)):
        counts = ak.num(arrays[names[0]])
        for name in names:
            assert ak.all(ak.num(arrays[name]) == counts), name
            expected = np.int32 if name.endswith(("channel", "module")) else np.float32
            assert ak.flatten(arrays[name]).to_numpy().dtype == expected, name
    for name in VERTEX_BRANCHES:
        assert mumu[name].to_numpy().dtype == np.float32
    assert ak.all(
        (ak.flatten(bhabha["hit_channel"]) >= 0) & (ak.flatten(bhabha["hit_channel"]) < 64)
    )
    modules = ak.flatten(mumu["trk_module"])
    assert ak.all((modules >= 1) & (modules <= 14))


def test_metadata_is_json_naming_the_file(toy: tuple[Path, ToyTruth, list[Path]]) -> None:
    for path in toy[2]:
        with uproot.open(path) as handle:
            metadata = json.loads(handle["metadata"])
            entries = handle["events"].num_entries
        run, stream = int(path.parts[-3][1:]), path.parts[-2]
        assert metadata["experiment"] == EXP
        assert metadata["run"] == run
        assert metadata["stream"] == stream
        assert metadata["nevents"] == entries == 40


def test_truth_lies_in_the_contract_ranges(toy: tuple[Path, ToyTruth, list[Path]]) -> None:
    truth = toy[1]
    gain, delta = truth.gain_array(), truth.delta_array()
    assert gain.shape == (64,) and np.all((gain >= GAIN_RANGE[0]) & (gain <= GAIN_RANGE[1]))
    assert delta.shape == (16,) and delta[0] == delta[15] == 0.0
    assert np.all((np.abs(delta[1:15]) <= DELTA_RANGE_UM[1]) & (delta[1:15] != 0.0))
    for run in RUNS:
        t0 = truth.t0(run)
        assert t0.shape == (64,) and np.all((t0 >= T0_RANGE_NS[0]) & (t0 <= T0_RANGE_NS[1]))
        for value, (low, high) in zip(truth.beamspot(run), BEAMSPOT_RANGE_CM, strict=True):
            assert low <= value <= high


def test_changes_happen_at_the_given_runs_only(toy: tuple[Path, ToyTruth, list[Path]]) -> None:
    truth = toy[1]
    for before, run in pairwise(RUNS):
        t0_changed = not np.array_equal(truth.t0(before), truth.t0(run))
        spot_changed = truth.beamspot(before) != truth.beamspot(run)
        assert t0_changed == (run in JUMPS), run
        assert spot_changed == (run in SPOT_CHANGES), run


def test_truth_json_round_trips(toy: tuple[Path, ToyTruth, list[Path]]) -> None:
    storage, truth, _ = toy
    doc = json.loads((storage / TRUTH_FILENAME).read_text())
    assert set(doc) >= {"experiment", "runs", "seed", "gain", "delta", "per_run", "low_stat"}
    assert set(doc["per_run"]["10"]) == {"t0", "beamspot"}
    assert set(doc["per_run"]["10"]["beamspot"]) == {"x", "y", "z"}
    assert doc["settings"]["t0_jumps"] == JUMPS
    assert ToyTruth.read(storage / TRUTH_FILENAME) == truth


def test_data_follow_the_truth(tmp_path: Path) -> None:
    """A coarse check of the generative model on one larger file per stream."""
    truth = generate_toy(tmp_path, 1, [5], files_per_run=1, events=3000, seed=11)
    hits = read_tree(data_file_path(tmp_path, 1, 5, "bhabha", 0))
    channel = ak.flatten(hits["hit_channel"]).to_numpy()
    time = ak.flatten(hits["hit_time"]).to_numpy()
    adc = ak.flatten(hits["hit_adc"]).to_numpy()
    assert np.mean(ak.num(hits["hit_channel"])) == pytest.approx(8.0, rel=0.03)
    in_peak = np.abs(time - truth.t0(5)[channel]) < 7.5
    assert np.mean(in_peak) == pytest.approx(0.9 + 0.1 * 15 / 200, abs=0.01)
    assert np.std((time - truth.t0(5)[channel])[in_peak]) == pytest.approx(1.5, rel=0.05)
    assert np.median(adc[in_peak] / truth.gain_array()[channel[in_peak]]) == pytest.approx(
        1.0, abs=0.005
    )

    tracks = read_tree(data_file_path(tmp_path, 1, 5, "mumu", 0))
    module = ak.flatten(tracks["trk_module"]).to_numpy()
    u_prev, u = (ak.flatten(tracks[b]).to_numpy() for b in ("trk_u_prev", "trk_u"))
    delta = truth.delta_array()
    step = (u_prev - u) - (delta[module] - delta[module - 1])
    assert np.median(np.abs(step)) == pytest.approx(15 * np.sqrt(2) * 0.674, rel=0.1)
    assert np.mean(np.abs(step) > 200) == pytest.approx(2 / 3 * 0.05 * 0.9, abs=0.012)

    vx, vz = (tracks[b].to_numpy().astype(np.float64) for b in ("vtx_x", "vtx_z"))
    bx, _, bz = truth.beamspot(5)
    x_error = np.hypot(0.001, 0.002) / np.sqrt(vx.size)
    assert abs(np.mean(vx) - bx - vertex_x_shift_cm(delta)) < 5 * x_error
    assert np.std(vz) == pytest.approx(np.hypot(0.035, 0.003), rel=0.05)
    assert np.mean(vz) == pytest.approx(bz, abs=5 * 0.035 / np.sqrt(vz.size))


def test_same_seed_same_data_and_single_files_regenerate(
    toy: tuple[Path, ToyTruth, list[Path]], tmp_path: Path
) -> None:
    storage, truth, _ = toy
    again = generate_toy(
        tmp_path,
        EXP,
        RUNS,
        files_per_run=2,
        events=40,
        seed=7,
        t0_jumps=JUMPS,
        beamspot_changes=SPOT_CHANGES,
    )
    assert again == truth
    for stream in ("bhabha", "mumu"):
        original = data_file_path(storage, EXP, 13, stream, 1)
        assert ak.array_equal(
            read_tree(original), read_tree(data_file_path(tmp_path, EXP, 13, stream, 1))
        )
        rewritten = write_toy_file(
            tmp_path / "one", ToyTruth.read(storage / TRUTH_FILENAME), 13, stream, 1
        )
        assert ak.array_equal(read_tree(original), read_tree(rewritten))
    other = data_file_path(storage, EXP, 13, "bhabha", 0)
    assert not ak.array_equal(
        read_tree(other), read_tree(data_file_path(storage, EXP, 13, "bhabha", 1))
    )


def test_another_seed_gives_other_truth() -> None:
    one = draw_truth(1, [1], seed=1, settings=ToySettings(1, 10))
    two = draw_truth(1, [1], seed=2, settings=ToySettings(1, 10))
    assert one.gain != two.gain and one.t0(1).tolist() != two.t0(1).tolist()


def test_low_stat_runs_get_their_event_count(tmp_path: Path) -> None:
    truth = generate_toy(tmp_path, 1, [1, 2, 3], files_per_run=1, events=30, low_stat={2: 4, 3: 0})
    assert truth.low_stat == {2: 4, 3: 0}
    for run, expected in ((1, 30), (2, 4), (3, 0)):
        for stream in ("bhabha", "mumu"):
            with uproot.open(data_file_path(tmp_path, 1, run, stream, 0)) as handle:
                assert handle["events"].num_entries == expected
                assert json.loads(handle["metadata"])["nevents"] == expected


def test_low_stat_runs_take_the_truth_of_their_merge_partner() -> None:
    runs = list(range(1, 9))
    plain = draw_truth(1, runs, seed=3, settings=ToySettings(1, 10, [3, 6], [4]))
    merged = draw_truth(
        1,
        runs,
        seed=3,
        settings=ToySettings(1, 10, [3, 6], [4]),
        low_stat=dict.fromkeys([2, 3, 5, 8], 1),
    )
    source = {1: 1, 2: 4, 3: 4, 4: 4, 5: 6, 6: 6, 7: 7, 8: 7}
    assert merged.gain == plain.gain and merged.delta == plain.delta
    for run, partner in source.items():
        assert merged.per_run[run] == plain.per_run[partner], run


@settings(max_examples=60, deadline=None, database=None)
@given(
    runs=st.lists(st.integers(0, 40), min_size=1, max_size=12, unique=True),
    data=st.data(),
)
def test_truth_never_changes_across_a_merge(runs: list[int], data: st.DataObject) -> None:
    """Whatever the jumps, a low-stat run has the truth of the run it is merged with."""
    ordered = sorted(runs)
    subset = st.lists(st.sampled_from(ordered), unique=True)
    jumps, changes, low = data.draw(subset), data.draw(subset), data.draw(subset)
    truth = draw_truth(
        0, runs, seed=5, settings=ToySettings(1, 10, jumps, changes), low_stat=dict.fromkeys(low, 0)
    )
    for position, run in enumerate(ordered):
        if run in low and len(ordered) > 1:
            partner = (
                ordered[position + 1] if position + 1 < len(ordered) else ordered[position - 1]
            )
            assert truth.per_run[run] == truth.per_run[partner]


@pytest.mark.parametrize(
    ("runs", "kwargs", "message"),
    [
        ([], {}, "no runs"),
        ([1, 2, 2], {}, "more than once"),
        ([-1, 2], {}, ">= 0"),
        ([1, 2], {"files_per_run": 0}, "files per run"),
        ([1, 2], {"events": -5}, "events per file"),
        ([1, 2], {"seed": -1}, "seed"),
        ([1, 2], {"t0_jumps": [3]}, "t0 jump at run"),
        ([1, 2], {"beamspot_changes": [0]}, "beam spot change"),
        ([1, 2], {"low_stat": {7: 10}}, "low-statistics run"),
        ([1, 2], {"low_stat": {1: -1}}, "low-statistics event counts"),
    ],
)
def test_bad_arguments_are_refused_before_writing(
    tmp_path: Path, runs: list[int], kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(B2CalError, match=message):
        generate_toy(tmp_path, 1, runs, **kwargs)
    assert not any(tmp_path.iterdir())


def test_bad_truth_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / TRUTH_FILENAME
    with pytest.raises(B2CalError, match="cannot read"):
        ToyTruth.read(path)
    path.write_text('{"experiment": 1}')
    with pytest.raises(B2CalError, match="not a toy truth"):
        ToyTruth.read(path)
    with pytest.raises(B2CalError, match="not in the toy truth"):
        draw_truth(1, [1], seed=1, settings=ToySettings(1, 1)).t0(2)
