"""Closure check: do a calibration's payloads give back the toy truth?

The criteria are the toy detector contract's (docs/toy-detector.md, *Closure criteria*). This is
how b2cal proves its reference calibrations right: every requested run is looked up in
``<output>/<Calibration>/outputdb/`` and the payload valid for it is compared, constant by
constant, with the truth that generated the data. Passing needs unbiased estimates *and* honest
uncertainties: the pulls must be small and, where the contract asks, neither too narrow nor too
wide. A run covered by a merged IoV is compared once per run, as the contract says. Problems
with a calibration's output (missing, incomplete, wrong) are failed results with a message, not
exceptions, so one bad calibration does not hide the others in a table.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from b2cal.caf.workspace import Workspace
from b2cal.core.iov import ExpRun
from b2cal.core.localdb import DATABASE_TXT, LocalDatabase, PayloadEntry
from b2cal.errors import B2CalError, MalformedPayload, WorkspaceError
from b2cal.toy.model import (
    FIRST_TRACK_MODULE,
    LAST_TRACK_MODULE,
    NUM_CHANNELS,
    NUM_MODULES,
    FloatArray,
    ToyTruth,
)

DEFAULT_CALIBRATIONS = ("ChannelT0", "ChannelGain", "ModuleAlignment", "BeamSpot")
PULL_LIMIT = 4.0
PULL_HARD_LIMIT = 6.0
MIN_FRACTION_BELOW_LIMIT = 0.99
PULL_RMS_RANGE = (0.6, 1.5)
MIN_P_VALUE = 0.001
#: Judged by chi2 with its covariance instead of by the pull width.
CHI2_CALIBRATION = "ModuleAlignment"
#: The alignment constants that are checked (modules 0 and 15 are fixed by definition).
_ALIGNED = slice(FIRST_TRACK_MODULE, LAST_TRACK_MODULE + 1)


@dataclass(frozen=True)
class ClosureResult:
    """The verdict for one calibration over the checked runs.

    ``pull_rms`` is set for calibrations judged by the pull width, ``chi2``/``ndf``/``p_value``
    for ModuleAlignment, whose constants are too correlated for a pull width to mean much.
    """

    calibration: str
    passed: bool
    n_constants: int
    max_abs_pull: float
    fraction_below_4: float
    pull_rms: float | None
    chi2: float | None
    ndf: int | None
    p_value: float | None
    message: str


@dataclass(frozen=True)
class _Comparison:
    estimate: FloatArray
    error: FloatArray
    truth: FloatArray

    def pulls(self) -> FloatArray:
        return (self.estimate - self.truth) / self.error


def check_closure(
    output: Path,
    truth: ToyTruth,
    calibrations: Sequence[str] = DEFAULT_CALIBRATIONS,
    runs: Sequence[int] | None = None,
) -> list[ClosureResult]:
    """Check each calibration's ``outputdb`` under ``output`` against ``truth``.

    ``runs`` defaults to all runs of the truth. Asking for an unknown calibration or a run
    outside the truth, or giving a folder that is not the output of a calibration run, is a
    usage error (:class:`B2CalError`); everything wrong with a calibration's output, including
    its absence, is reported in the results.
    """
    unknown = [name for name in calibrations if name not in _COMPARERS]
    if unknown:
        raise B2CalError(
            f"no closure check for {unknown}; known calibrations: {', '.join(_COMPARERS)}"
        )
    checked = list(truth.runs if runs is None else runs)
    outside = sorted(set(checked) - set(truth.runs))
    if outside:
        raise B2CalError(f"runs {outside} are not in the toy truth (runs {truth.runs})")
    workspace = Workspace(output)
    if not workspace.root.exists():
        raise WorkspaceError(workspace.root, "does not exist")
    calibrated = workspace.run_record().calibrations
    return [
        _check_calibration(workspace, calibrated, truth, name, checked) for name in calibrations
    ]


def _check_calibration(
    workspace: Workspace, calibrated: list[str], truth: ToyTruth, name: str, runs: list[int]
) -> ClosureResult:
    if name not in calibrated:
        held = ", ".join(calibrated) or "no calibration"
        return _failed(name, f"{name} is not in this output (it holds {held})")
    directory = workspace.calibration(name).outputdb
    if not (directory / DATABASE_TXT).is_file():
        return _failed(
            name, f"{name} has no output database yet: {directory / DATABASE_TXT} does not exist"
        )
    try:
        entries = [entry for entry in LocalDatabase(directory).entries if entry.name == name]
        coverage = {
            run: [e for e in entries if e.iov.contains(ExpRun(truth.experiment, run))]
            for run in runs
        }
        single = {run: found[0] for run, found in coverage.items() if len(found) == 1}
        docs = _read_payloads(single.values())
        pulls = _pulls(name, truth, single, docs)
        chi2 = _alignment_chi2(truth, docs) if name == CHI2_CALIBRATION else None
    except B2CalError as exc:
        return _failed(name, str(exc))
    return _verdict(name, pulls, chi2, _coverage_problems(coverage))


def _read_payloads(
    entries: Iterable[PayloadEntry],
) -> dict[int, tuple[PayloadEntry, dict[str, Any]]]:
    """Each distinct payload revision once, keyed by revision."""
    docs: dict[int, tuple[PayloadEntry, dict[str, Any]]] = {}
    for entry in entries:
        if entry.revision not in docs:
            try:
                docs[entry.revision] = (entry, entry.read())
            except ValueError as exc:
                raise MalformedPayload(f"{entry.line()}: payload is not JSON ({exc})") from exc
    return docs


def _pulls(
    name: str,
    truth: ToyTruth,
    single: Mapping[int, PayloadEntry],
    docs: Mapping[int, tuple[PayloadEntry, dict[str, Any]]],
) -> FloatArray:
    """All pulls of all checked runs; a payload covering several runs counts for each."""
    compare = _COMPARERS[name]
    parts = []
    for run, entry in single.items():
        try:
            parts.append(compare(docs[entry.revision][1], truth, run).pulls())
        except MalformedPayload as exc:
            raise MalformedPayload(f"{entry.line()}: {exc}") from exc
    return np.concatenate(parts) if parts else np.zeros(0)


def _alignment_chi2(
    truth: ToyTruth, docs: Mapping[int, tuple[PayloadEntry, dict[str, Any]]]
) -> tuple[float, int]:
    """chi2 of ``du - delta`` with the payload covariance, summed over distinct payloads.

    Summed per payload, not per run: a single-IoV payload covering ten runs is one
    measurement, and counting it ten times would inflate both chi2 and ndf.
    """
    total, ndf = 0.0, 0
    for entry, doc in docs.values():
        try:
            comparison = _compare_alignment(doc, truth, truth.runs[0])
            cov = _matrix(doc, "du_cov", NUM_MODULES)[_ALIGNED, _ALIGNED]
            total += _chi2(comparison.estimate - comparison.truth, cov)
        except MalformedPayload as exc:
            raise MalformedPayload(f"{entry.line()}: {exc}") from exc
        ndf += comparison.estimate.size
    return total, ndf


def _chi2(residual: FloatArray, cov: FloatArray) -> float:
    try:
        lower = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        raise MalformedPayload("du_cov of modules 1..14 is not positive definite") from None
    whitened = np.linalg.solve(lower, residual)
    return float(whitened @ whitened)


def _coverage_problems(coverage: Mapping[int, list[PayloadEntry]]) -> list[str]:
    uncovered = [run for run, found in coverage.items() if not found]
    multiple = [run for run, found in coverage.items() if len(found) > 1]
    problems = []
    if uncovered:
        problems.append(f"runs not covered by any IoV: {uncovered}")
    if multiple:
        problems.append(f"runs covered by more than one IoV: {multiple}")
    return problems


def _verdict(
    name: str, pulls: FloatArray, chi2: tuple[float, int] | None, problems: list[str]
) -> ClosureResult:
    """Apply the contract's criteria to the pulls (and chi2) of one calibration."""
    if pulls.size == 0:
        return _failed(name, "; ".join([*problems, "no constants to compare"]))
    abs_pulls = np.abs(pulls)
    max_abs = float(abs_pulls.max())
    fraction = float(np.mean(abs_pulls < PULL_LIMIT))
    if fraction < MIN_FRACTION_BELOW_LIMIT:
        problems.append(f"only {fraction:.1%} of |pulls| below {PULL_LIMIT:g}")
    if max_abs >= PULL_HARD_LIMIT:
        problems.append(f"largest |pull| {max_abs:.2f} is not below {PULL_HARD_LIMIT:g}")
    rms = None
    if chi2 is None:
        rms = float(np.sqrt(np.mean(pulls**2)))
        if not PULL_RMS_RANGE[0] <= rms <= PULL_RMS_RANGE[1]:
            problems.append(f"pull RMS {rms:.3f} outside {list(PULL_RMS_RANGE)}")
    p_value = None
    if chi2 is not None:
        p_value = chi2_sf(*chi2)
        if p_value <= MIN_P_VALUE:
            problems.append(f"chi2 {chi2[0]:.1f}/{chi2[1]} has p-value {p_value:.2g}")
    return ClosureResult(
        calibration=name,
        passed=not problems,
        n_constants=int(pulls.size),
        max_abs_pull=max_abs,
        fraction_below_4=fraction,
        pull_rms=rms,
        chi2=None if chi2 is None else chi2[0],
        ndf=None if chi2 is None else chi2[1],
        p_value=p_value,
        message="; ".join(problems),
    )


def _failed(name: str, message: str) -> ClosureResult:
    return ClosureResult(name, False, 0, math.nan, math.nan, None, None, None, None, message)


def chi2_sf(x: float, ndf: int) -> float:
    """P(chi2 with ``ndf`` degrees of freedom >= ``x``), for integer ``ndf`` >= 1.

    This is the regularised upper incomplete gamma Q(ndf/2, x/2), summed in closed form from
    Q(a+1, y) = Q(a, y) + y^a e^-y / Gamma(a+1), starting at Q(0, y) = 0 (even ndf) or
    Q(1/2, y) = erfc(sqrt(y)) (odd ndf). Terms are built in log space, so large x or ndf
    neither overflow nor underflow where they matter. It saves a dependency on scipy.
    """
    if ndf < 1:
        raise ValueError(f"chi2 needs ndf >= 1, not {ndf}")
    if x <= 0.0:
        return 1.0
    y = x / 2.0
    start = 0.5 if ndf % 2 else 0.0
    total = math.erfc(math.sqrt(y)) if ndf % 2 else 0.0
    for i in range(ndf // 2):
        a = start + i
        total += math.exp(a * math.log(y) - y - math.lgamma(a + 1.0))
    return min(total, 1.0)


def format_closure_table(results: Sequence[ClosureResult]) -> str:
    """A plain-text table of results, one line per calibration, for demos and logs."""
    header = f"{'calibration':<16} {'result':<6} {'n':>6} {'max|pull|':>9} {'<4':>7} {'rms':>6}"
    header += f" {'chi2/ndf':>11} {'p':>8}  message"
    lines = [header]
    for r in results:
        largest = f"{r.max_abs_pull:.2f}" if r.n_constants else "-"
        below = f"{r.fraction_below_4:.2%}" if r.n_constants else "-"
        rms = "-" if r.pull_rms is None else f"{r.pull_rms:.3f}"
        chi2 = "-" if r.chi2 is None else f"{r.chi2:.1f}/{r.ndf}"
        p = "-" if r.p_value is None else f"{r.p_value:.3g}"
        lines.append(
            f"{r.calibration:<16} {'PASS' if r.passed else 'FAIL':<6} {r.n_constants:>6}"
            f" {largest:>9} {below:>7} {rms:>6} {chi2:>11} {p:>8}"
            f"  {r.message}"
        )
    return "\n".join(lines)


# --- reading payloads --------------------------------------------------------------------


def _field(doc: Mapping[str, Any], key: str) -> Any:
    try:
        return doc[key]
    except KeyError:
        raise MalformedPayload(f"payload has no field {key!r}") from None


def _numbers(values: Any, what: str, shape: tuple[int, ...]) -> FloatArray:
    """``values`` as finite floats of the given shape, or a :class:`MalformedPayload` saying why."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise MalformedPayload(f"payload field {what} is not numeric") from None
    if array.shape != shape or not np.all(np.isfinite(array)):
        dims = "x".join(str(n) for n in shape)
        raise MalformedPayload(f"payload field {what} must hold {dims} finite numbers")
    return array


def _positive(errors: FloatArray, what: str) -> FloatArray:
    """Uncertainties must be positive, or no pull can be formed."""
    if np.any(errors <= 0.0):
        raise MalformedPayload(f"payload field {what} holds uncertainties that are not positive")
    return errors


def _vector(doc: Mapping[str, Any], key: str, length: int) -> FloatArray:
    return _numbers(_field(doc, key), repr(key), (length,))


def _matrix(doc: Mapping[str, Any], key: str, size: int) -> FloatArray:
    return _numbers(_field(doc, key), repr(key), (size, size))


def _compare_t0(doc: Mapping[str, Any], truth: ToyTruth, run: int) -> _Comparison:
    errors = _positive(_vector(doc, "t0_err", NUM_CHANNELS), "'t0_err'")
    return _Comparison(_vector(doc, "t0", NUM_CHANNELS), errors, truth.t0(run))


def _compare_gain(doc: Mapping[str, Any], truth: ToyTruth, run: int) -> _Comparison:
    errors = _positive(_vector(doc, "gain_err", NUM_CHANNELS), "'gain_err'")
    return _Comparison(_vector(doc, "gain", NUM_CHANNELS), errors, truth.gain_array())


def _compare_alignment(doc: Mapping[str, Any], truth: ToyTruth, run: int) -> _Comparison:
    """``du`` estimates ``delta``: compare modules 1..14 (0 and 15 are fixed to zero)."""
    errors = _positive(_vector(doc, "du_err", NUM_MODULES)[_ALIGNED], "'du_err' (modules 1..14)")
    estimate = _vector(doc, "du", NUM_MODULES)[_ALIGNED]
    return _Comparison(estimate, errors, truth.delta_array()[_ALIGNED])


def _compare_beamspot(doc: Mapping[str, Any], truth: ToyTruth, run: int) -> _Comparison:
    def triple(keys: tuple[str, str, str]) -> FloatArray:
        return _numbers([_field(doc, key) for key in keys], "/".join(keys), (3,))

    errors = _positive(triple(("x_err", "y_err", "z_err")), "x_err/y_err/z_err")
    return _Comparison(triple(("x", "y", "z")), errors, np.asarray(truth.beamspot(run)))


_COMPARERS: dict[str, Callable[[Mapping[str, Any], ToyTruth, int], _Comparison]] = {
    "ChannelT0": _compare_t0,
    "ChannelGain": _compare_gain,
    "ModuleAlignment": _compare_alignment,
    "BeamSpot": _compare_beamspot,
}
