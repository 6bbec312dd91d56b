"""Closure: toy data → `b2cal caf run` of all four reference calibrations → compare with truth.

This is the acceptance test of the engine and the reference calibrations together, through the
real command: the criteria are those at the end of docs/toy-detector.md (checked by
b2cal.toy.closure), on data with a t0 jump, a moving beam spot and a low-statistics run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli import b2cal_inline

from b2cal.toy.closure import check_closure, format_closure_table
from b2cal.toy.generate import generate_toy
from b2cal.toy.model import ToyTruth

pytestmark = pytest.mark.unit

ALL = "ChannelT0,ChannelGain,ModuleAlignment,BeamSpot"


def caf_run(storage: Path, output: Path, runs: str, *extra: str) -> None:
    result = b2cal_inline(
        "caf", "run", "--storage", storage, "--exp", "1", "--runs", runs,
        "--calibrations", ALL, "--output", output, *extra,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def outcome(output: Path, name: str) -> dict[str, object]:
    doc: dict[str, object] = json.loads((output / name / "result.json").read_text())
    return doc


def database_lines(output: Path, name: str) -> list[str]:
    return (output / name / "outputdb/database.txt").read_text().splitlines()


def test_closure_with_jumps_and_a_low_statistics_run(tmp_path: Path) -> None:
    storage, output = tmp_path / "storage", tmp_path / "output"
    generate_toy(
        storage, 1, range(1, 9), t0_jumps=[5], beamspot_changes=[4], low_stat={6: 40}, seed=31
    )
    caf_run(storage, output, "1-8")
    results = check_closure(output, ToyTruth.read(storage / "truth.json"))
    assert all(r.passed for r in results), format_closure_table(results)
    # the low-statistics run 6 is merged with run 7 by both run-by-run calibrations
    for name in ("ChannelT0", "BeamSpot"):
        assert f"dbstore/{name} 6 1,6,1,7" in database_lines(output, name)
        assert database_lines(output, name)[-1] == f"dbstore/{name} 7 1,8,1,8"
    assert database_lines(output, "ChannelGain") == ["dbstore/ChannelGain 1 1,1,1,8"]
    alignment = outcome(output, "ModuleAlignment")
    assert alignment["iterations"] >= 2 and alignment["converged"] is True  # type: ignore[operator]
    for name in ALL.split(","):
        assert outcome(output, name)["validation"]["passed"] is True  # type: ignore[index]


def test_closure_open_ended_with_leftover_low_statistics_run_at_the_end(tmp_path: Path) -> None:
    storage, output = tmp_path / "storage", tmp_path / "output"
    generate_toy(storage, 1, range(10, 15), beamspot_changes=[12], low_stat={14: 30}, seed=5)
    caf_run(storage, output, "10-14", "--open-ended")
    results = check_closure(output, ToyTruth.read(storage / "truth.json"))
    assert all(r.passed for r in results), format_closure_table(results)
    # run 14 is left over at the end: merged into the previous group, and the IoV stays open
    assert database_lines(output, "BeamSpot")[-1] == "dbstore/BeamSpot 4 1,13,-1,-1"
    assert database_lines(output, "ModuleAlignment") == ["dbstore/ModuleAlignment 1 1,10,-1,-1"]


def test_payloads_are_bit_identical_whatever_the_number_of_workers(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    generate_toy(storage, 1, range(1, 4), events=1500, seed=9)
    caf_run(storage, tmp_path / "one", "1-3", "--workers", "1")
    caf_run(storage, tmp_path / "two", "1-3", "--workers", "2")
    for name in ALL.split(","):
        one = {p.name: p.read_bytes() for p in (tmp_path / "one" / name / "outputdb").iterdir()}
        two = {p.name: p.read_bytes() for p in (tmp_path / "two" / name / "outputdb").iterdir()}
        assert one == two, name
