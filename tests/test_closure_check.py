"""The closure check passes honest payloads and catches biased, over- or under-confident ones,
and output whose IoVs do not cover every run exactly once."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from b2cal.caf.records import RunRecord
from b2cal.caf.workspace import RUN_RECORD
from b2cal.core.iov import IoV
from b2cal.core.localdb import write_local_database
from b2cal.errors import B2CalError, WorkspaceError
from b2cal.toy.closure import (
    DEFAULT_CALIBRATIONS,
    ClosureResult,
    check_closure,
    chi2_sf,
    format_closure_table,
)
from b2cal.toy.generate import draw_truth
from b2cal.toy.model import ToySettings, ToyTruth

pytestmark = pytest.mark.unit

EXP = 2
RUNS = list(range(1, 7))
T0_IOVS = [(1, 2), (3, 4), (5, 6)]  # t0 jumps at run 3
SPOT_IOVS = [(1, 4), (5, 6)]  # beam spot changes at run 5
Doc = dict[str, Any]
Floats = npt.NDArray[np.float64]


@pytest.fixture(scope="module")
def truth() -> ToyTruth:
    return draw_truth(EXP, RUNS, seed=5, settings=ToySettings(1, 10, [3], [5]))


@pytest.fixture
def output(tmp_path: Path) -> Path:
    """An output folder of a calibration run of the four calibrations, still without payloads."""
    return make_output(tmp_path, list(DEFAULT_CALIBRATIONS))


def make_output(folder: Path, calibrations: list[str]) -> Path:
    record = RunRecord(
        arguments={},
        calibration_run="test",
        calibrations=calibrations,
        exp=EXP,
        first_run=RUNS[0],
        last_run=RUNS[-1],
        open_ended=False,
    )
    record.write(folder / RUN_RECORD)
    return folder


def iov(first: int, last: int) -> IoV:
    return IoV(EXP, first, EXP, last)


def write_db(output: Path, name: str, payloads: Sequence[tuple[IoV, Doc]]) -> None:
    write_local_database(output / name / "outputdb", [(name, i, doc) for i, doc in payloads])


def t0_doc(truth: ToyTruth, run: int, rng: np.random.Generator, shift: float = 0.0) -> Doc:
    error = np.full(64, 0.08)
    t0 = truth.t0(run) + rng.normal(0.0, error) + shift * error
    return {"t0": t0.tolist(), "t0_err": error.tolist()}


def gain_doc(truth: ToyTruth, rng: np.random.Generator, claimed: float = 1.0) -> Doc:
    error = rng.uniform(0.002, 0.004, 64)
    gain = truth.gain_array() + rng.normal(0.0, error)
    return {"gain": gain.tolist(), "gain_err": (claimed * error).tolist()}


def alignment_cov() -> Floats:
    """The covariance of a least-squares alignment: residual a_m - (a_m-1 + a_m+1)/2 of
    tracks with 15 µm hits, 400 tracks per module, modules 0 and 15 fixed: strongly correlated."""
    design = np.eye(14) - 0.5 * (np.eye(14, k=1) + np.eye(14, k=-1))
    inverse = np.linalg.inv(design)
    return 1.5 * 15.0**2 / 400 * inverse @ inverse.T


def alignment_doc(truth: ToyTruth, rng: np.random.Generator, cov_scale: float = 1.0) -> Doc:
    cov = alignment_cov()
    du = np.zeros(16)
    du[1:15] = truth.delta_array()[1:15] + np.linalg.cholesky(cov) @ rng.normal(size=14)
    full = np.zeros((16, 16))
    full[1:15, 1:15] = cov * cov_scale
    return {"du": du.tolist(), "du_err": np.sqrt(np.diag(full)).tolist(), "du_cov": full.tolist()}


def spot_doc(truth: ToyTruth, run: int, rng: np.random.Generator, z_shift: float = 0.0) -> Doc:
    errors = np.array([4e-5, 2e-5, 1.5e-3])
    x, y, z = np.asarray(truth.beamspot(run)) + rng.normal(0.0, errors) + [0, 0, z_shift]
    return {
        "x": x,
        "y": y,
        "z": z,
        "x_err": errors[0],
        "y_err": errors[1],
        "z_err": errors[2],
    }


def write_honest_output(output: Path, truth: ToyTruth, seed: int) -> None:
    rng = np.random.default_rng(seed)
    write_db(output, "ChannelT0", [(iov(a, b), t0_doc(truth, a, rng)) for a, b in T0_IOVS])
    write_db(output, "ChannelGain", [(iov(1, 6), gain_doc(truth, rng))])
    write_db(output, "ModuleAlignment", [(iov(1, 6), alignment_doc(truth, rng))])
    write_db(output, "BeamSpot", [(iov(a, b), spot_doc(truth, a, rng)) for a, b in SPOT_IOVS])


def by_name(results: list[ClosureResult]) -> dict[str, ClosureResult]:
    return {result.calibration: result for result in results}


def test_honest_payloads_pass(output: Path, truth: ToyTruth) -> None:
    write_honest_output(output, truth, seed=1)
    results = by_name(check_closure(output, truth))
    assert all(r.passed for r in results.values()), format_closure_table(list(results.values()))
    assert results["ChannelT0"].n_constants == 64 * 6
    assert results["ChannelGain"].n_constants == 64 * 6
    assert results["BeamSpot"].n_constants == 3 * 6
    alignment = results["ModuleAlignment"]
    assert alignment.n_constants == 14 * 6 and alignment.ndf == 14
    assert alignment.pull_rms is None and alignment.p_value is not None
    assert results["ChannelT0"].p_value is None and results["ChannelT0"].pull_rms is not None
    assert all(r.message == "" for r in results.values())


@pytest.mark.parametrize("seed", range(2, 12))
def test_honest_many_constant_payloads_pass_for_any_seed(
    output: Path, truth: ToyTruth, seed: int
) -> None:
    write_honest_output(output, truth, seed=seed)
    results = by_name(check_closure(output, truth, ["ChannelT0", "ChannelGain"]))
    assert all(r.passed for r in results.values()), format_closure_table(list(results.values()))


Mutation = Callable[[Path, ToyTruth, np.random.Generator], None]


def biased_t0(output: Path, truth: ToyTruth, rng: np.random.Generator) -> None:
    docs = [(iov(a, b), t0_doc(truth, a, rng, shift=3.0 if a == 3 else 0.0)) for a, b in T0_IOVS]
    write_db(output, "ChannelT0", docs)


def stale_t0(output: Path, truth: ToyTruth, rng: np.random.Generator) -> None:
    """The t0 jump at run 3 missed: one payload for runs 1-4."""
    write_db(
        output,
        "ChannelT0",
        [(iov(1, 4), t0_doc(truth, 1, rng)), (iov(5, 6), t0_doc(truth, 5, rng))],
    )


def overstated_gain_errors(output: Path, truth: ToyTruth, rng: np.random.Generator) -> None:
    write_db(output, "ChannelGain", [(iov(1, 6), gain_doc(truth, rng, claimed=2.0))])


def understated_gain_errors(output: Path, truth: ToyTruth, rng: np.random.Generator) -> None:
    write_db(output, "ChannelGain", [(iov(1, 6), gain_doc(truth, rng, claimed=0.3))])


def understated_alignment_cov(output: Path, truth: ToyTruth, rng: np.random.Generator) -> None:
    write_db(output, "ModuleAlignment", [(iov(1, 6), alignment_doc(truth, rng, cov_scale=0.2))])


def biased_alignment(output: Path, truth: ToyTruth, rng: np.random.Generator) -> None:
    """One module off by 2 of its (marginal) errors: a pull check alone would let it through."""
    doc = alignment_doc(truth, rng)
    doc["du"][7] += 2.0 * doc["du_err"][7]
    write_db(output, "ModuleAlignment", [(iov(1, 6), doc)])


def biased_beamspot(output: Path, truth: ToyTruth, rng: np.random.Generator) -> None:
    docs = [(iov(a, b), spot_doc(truth, a, rng, z_shift=0.015)) for a, b in SPOT_IOVS]
    write_db(output, "BeamSpot", docs)


@pytest.mark.parametrize(
    ("mutation", "calibration", "message"),
    [
        (biased_t0, "ChannelT0", "pull RMS"),
        (stale_t0, "ChannelT0", "of |pulls| below 4"),
        (overstated_gain_errors, "ChannelGain", "pull RMS 0.4"),
        (understated_gain_errors, "ChannelGain", "largest |pull|"),
        (understated_alignment_cov, "ModuleAlignment", "p-value"),
        (biased_alignment, "ModuleAlignment", "p-value"),
        (biased_beamspot, "BeamSpot", "largest |pull|"),
    ],
)
def test_wrong_payloads_fail(
    output: Path, truth: ToyTruth, mutation: Mutation, calibration: str, message: str
) -> None:
    write_honest_output(output, truth, seed=1)
    mutation(output, truth, np.random.default_rng(99))
    results = by_name(check_closure(output, truth))
    assert not results[calibration].passed
    assert message in results[calibration].message
    assert all(r.passed for name, r in results.items() if name != calibration)


@pytest.mark.parametrize(
    ("iovs", "message"),
    [
        ([(1, 2), (4, 6)], "not covered by any IoV: [3]"),
        ([(1, 3), (3, 6)], "more than one IoV: [3]"),
        ([(1, 2), (3, 4)], "not covered by any IoV: [5, 6]"),
    ],
)
def test_runs_must_be_covered_exactly_once(
    output: Path, truth: ToyTruth, iovs: list[tuple[int, int]], message: str
) -> None:
    rng = np.random.default_rng(3)
    write_db(output, "ChannelT0", [(iov(a, b), t0_doc(truth, a, rng)) for a, b in iovs])
    (result,) = check_closure(output, truth, ["ChannelT0"])
    assert not result.passed
    assert message in result.message


def test_open_ended_and_merged_iovs_count_once_per_run(output: Path, truth: ToyTruth) -> None:
    rng = np.random.default_rng(4)
    docs = [(iov(1, 4), spot_doc(truth, 1, rng)), (IoV(EXP, 5, -1, -1), spot_doc(truth, 5, rng))]
    write_db(output, "BeamSpot", docs)
    (result,) = check_closure(output, truth, ["BeamSpot"])
    assert result.passed, result.message
    assert result.n_constants == 3 * 6
    (subset,) = check_closure(output, truth, ["BeamSpot"], runs=[5, 6])
    assert subset.n_constants == 3 * 2


def test_missing_output_database_is_a_failed_result(output: Path, truth: ToyTruth) -> None:
    results = check_closure(output, truth)
    assert [r.passed for r in results] == [False] * 4
    assert all("no output database yet" in r.message for r in results)
    assert "FAIL" in format_closure_table(results)


def test_calibration_not_in_the_output_is_a_failed_result(tmp_path: Path, truth: ToyTruth) -> None:
    output = make_output(tmp_path, ["ChannelT0"])
    write_db(
        output,
        "ChannelT0",
        [(iov(a, b), t0_doc(truth, a, np.random.default_rng(7))) for a, b in T0_IOVS],
    )
    results = by_name(check_closure(output, truth, ["ChannelT0", "BeamSpot"]))
    assert results["ChannelT0"].passed, results["ChannelT0"].message
    assert not results["BeamSpot"].passed
    assert results["BeamSpot"].message == "BeamSpot is not in this output (it holds ChannelT0)"
    assert "nan" not in format_closure_table(list(results.values()))


@pytest.mark.parametrize(
    ("exists", "message"), [(False, "does not exist"), (True, "not the output")]
)
def test_a_folder_that_is_not_an_output_is_a_usage_error(
    tmp_path: Path, truth: ToyTruth, exists: bool, message: str
) -> None:
    folder = tmp_path / "folder"
    if exists:
        folder.mkdir()
    with pytest.raises(WorkspaceError, match=message):
        check_closure(folder, truth)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda doc: doc.pop("t0_err"), "no field 't0_err'"),
        (lambda doc: doc.update(t0=doc["t0"][:10]), "must hold 64 finite numbers"),
        (lambda doc: doc.update(t0="soon"), "not numeric"),
        (lambda doc: doc["t0_err"].__setitem__(5, 0.0), "not positive"),
    ],
)
def test_malformed_payloads_fail_with_a_message(
    output: Path, truth: ToyTruth, edit: Callable[[Doc], Any], message: str
) -> None:
    docs = [(iov(a, b), t0_doc(truth, a, np.random.default_rng(5))) for a, b in T0_IOVS]
    edit(docs[1][1])
    write_db(output, "ChannelT0", docs)
    (result,) = check_closure(output, truth, ["ChannelT0"])
    assert not result.passed
    assert message in result.message and "dbstore/ChannelT0 2" in result.message


def test_alignment_covariance_must_be_usable(output: Path, truth: ToyTruth) -> None:
    doc = alignment_doc(truth, np.random.default_rng(6))
    doc["du_cov"][3][3] = -1.0
    write_db(output, "ModuleAlignment", [(iov(1, 6), doc)])
    (result,) = check_closure(output, truth, ["ModuleAlignment"])
    assert not result.passed and "not positive definite" in result.message


def test_usage_errors_raise(output: Path, truth: ToyTruth) -> None:
    with pytest.raises(B2CalError, match="no closure check"):
        check_closure(output, truth, ["Nonsense"])
    with pytest.raises(B2CalError, match="not in the toy truth"):
        check_closure(output, truth, runs=[99])


@pytest.mark.parametrize(
    ("x", "ndf", "expected"),
    [
        (3.841458820694124, 1, 0.05),
        (5.991464547107979, 2, 0.05),
        (7.814727903251178, 3, 0.05),
        (23.684791304840576, 14, 0.05),
        (36.12327368039813, 14, 0.001),
        (1.0, 3, 0.8012519569012008),
        (0.0, 14, 1.0),
        (300.0, 14, 0.0),
    ],
)
def test_chi2_survival_function_known_values(x: float, ndf: int, expected: float) -> None:
    assert chi2_sf(x, ndf) == pytest.approx(expected, rel=1e-9, abs=1e-40)


@pytest.mark.parametrize("ndf", [1, 2, 5, 14, 15, 60])
def test_chi2_survival_function_integrates_the_density(ndf: int) -> None:
    """Q(x) must equal the integral of the chi2 density from x to infinity (done numerically)."""
    k = ndf / 2

    def density(t: Floats) -> Floats:
        log = (k - 1) * np.log(t) - t / 2 - k * math.log(2) - math.lgamma(k)
        return np.asarray(np.exp(log))

    for x in (0.5 * ndf, ndf, 2.0 * ndf):
        grid = np.linspace(x, x + 40 * ndf + 200, 400_001)
        values = density(grid)
        integral = float(np.sum((values[1:] + values[:-1]) / 2 * np.diff(grid)))
        assert chi2_sf(x, ndf) == pytest.approx(integral, rel=1e-6)


def test_chi2_survival_function_refuses_no_degrees_of_freedom() -> None:
    with pytest.raises(ValueError, match="ndf"):
        chi2_sf(1.0, 0)
