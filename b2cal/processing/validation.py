"""Validation of a calibration's payloads before sign-off: constants, change, pulls, plots.

For every payload IoV of a calibration's ``outputdb`` the numeric fields are summarised, and
compared with the payload of the same name that the *reference tag* (what reconstruction reads
now) has at the IoV's first run. A field ``x`` with a sibling ``x_err`` gets pulls,
``(new - reference) / sqrt(err_new² + err_reference²)`` element by element (elements whose
errors are both zero, such as fixed alignment modules, are left out).

A validation *passes* when the calibration ended OK, wrote at least one payload, and every
number in its payloads is finite. Pulls are reported and those beyond :data:`PULL_FLAG` are
flagged for the expert, but they do not fail the validation: constants are expected to move
(that is why one calibrates), and only an expert can tell a real change from a problem.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from b2cal.cdb.store import ConditionsStore
from b2cal.core.files import atomic_write_bytes, atomic_write_json
from b2cal.core.localdb import read_database_txt
from b2cal.errors import CdbError

#: Pulls beyond this are flagged in the report.
PULL_FLAG = 5.0


class FieldSummary(BaseModel):
    iov: str
    field: str
    size: int
    mean: float
    min: float
    max: float
    #: Mean change against the reference payload (None: no reference).
    change: float | None = None
    max_abs_pull: float | None = None
    flagged: int = 0


class Validation(BaseModel):
    calibration: str
    passed: bool
    problems: list[str]
    reference_tag: str | None
    fields: list[FieldSummary]
    plots: list[str]

    def markdown(self) -> str:
        """The report as Markdown (a Prefect artifact and ``validation.md``)."""
        verdict = "passed" if self.passed else "FAILED"
        lines = [f"# {self.calibration}: validation {verdict}", ""]
        lines += [f"- problem: {p}" for p in self.problems]
        reference = self.reference_tag or "none (no reference tag)"
        lines += [f"Reference tag: {reference}", ""]
        lines += [
            "| IoV | field | n | mean | min | max | change | max abs pull | flagged |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for f in self.fields:
            change = "" if f.change is None else f"{f.change:+.4g}"
            pull = "" if f.max_abs_pull is None else f"{f.max_abs_pull:.2f}"
            lines.append(
                f"| {f.iov} | {f.field} | {f.size} | {f.mean:.4g} | {f.min:.4g} | {f.max:.4g} "
                f"| {change} | {pull} | {f.flagged or ''} |"
            )
        lines.append("")
        lines += [f"![{Path(p).stem}](file://{p})" for p in self.plots]
        return "\n".join(lines) + "\n"

    def table(self) -> list[dict[str, Any]]:
        """The constants per IoV as rows (a Prefect table artifact)."""
        return [f.model_dump() for f in self.fields]


def _numeric_fields(doc: dict[str, Any]) -> dict[str, np.ndarray]:
    fields = {}
    for key, value in doc.items():
        try:
            array = np.asarray(value, dtype=float)
        except (TypeError, ValueError):
            continue
        fields[key] = array.ravel()
    return fields


def _reference(
    store: ConditionsStore | None, tag: str | None, name: str, iov: Any
) -> dict[str, np.ndarray] | None:
    if store is None or tag is None:
        return None
    try:
        entry = store.lookup([tag], name, iov.first)
        return _numeric_fields(json.loads(store.payload_data(entry.payload)))
    except (CdbError, ValueError):
        return None


def validate_output(
    calibration: str,
    outputdb: Path,
    folder: Path,
    store: ConditionsStore | None,
    reference_tag: str | None,
    *,
    reference_required: bool = False,
) -> Validation:
    """Validate ``outputdb`` against ``reference_tag``; report and plots go to ``folder``.

    A reference tag that does not exist fails the validation when it was asked for by name
    (``reference_required``); the site's default reference may not exist yet (a new site),
    and then there is nothing to compare with.
    """
    problems: list[str] = []
    known = {t.name for t in store.tags()} if store is not None else set()
    if reference_tag is not None and reference_tag not in known:
        if reference_required:
            problems.append(f"reference tag {reference_tag} does not exist")
        reference_tag = None
    entries = read_database_txt(outputdb) if (outputdb / "database.txt").is_file() else []
    if not entries:
        problems.append(f"no payloads in {outputdb}")
    summaries: list[FieldSummary] = []
    curves: dict[str, list[tuple[str, np.ndarray, np.ndarray | None, np.ndarray | None]]] = {}
    pulls: list[float] = []
    for entry in entries:
        fields = _numeric_fields(entry.read())
        reference = _reference(store, reference_tag, entry.name, entry.iov)
        for key, values in fields.items():
            if key.endswith("_err") or values.size == 0 or key.endswith("_cov"):
                continue
            if not np.all(np.isfinite(values)):
                problems.append(f"{entry.name} {key} in {entry.iov} holds non-finite values")
            summary = FieldSummary(
                iov=str(entry.iov),
                field=f"{entry.name}.{key}",
                size=int(values.size),
                mean=float(np.nanmean(values)),
                min=float(np.nanmin(values)),
                max=float(np.nanmax(values)),
            )
            ref = reference.get(key) if reference else None
            if ref is not None and ref.shape == values.shape:
                summary.change = float(np.nanmean(values - ref))
                errors = fields.get(f"{key}_err")
                ref_errors = reference.get(f"{key}_err") if reference else None
                if errors is not None and ref_errors is not None:
                    scale = np.sqrt(errors**2 + ref_errors**2)
                    used = scale > 0
                    if used.any():
                        pull = (values[used] - ref[used]) / scale[used]
                        summary.max_abs_pull = float(np.max(np.abs(pull)))
                        summary.flagged = int(np.sum(np.abs(pull) > PULL_FLAG))
                        pulls.extend(float(p) for p in pull)
            summaries.append(summary)
            curves.setdefault(f"{entry.name}.{key}", []).append(
                (str(entry.iov), values, fields.get(f"{key}_err"), ref)
            )
    plots = _plots(folder, curves, pulls)
    validation = Validation(
        calibration=calibration,
        passed=not problems,
        problems=problems,
        reference_tag=reference_tag,
        fields=summaries,
        plots=[str(p) for p in plots],
    )
    atomic_write_json(folder / "validation.json", validation.model_dump())
    atomic_write_bytes(folder / "validation.md", validation.markdown().encode())
    return validation


def _plots(
    folder: Path,
    curves: dict[str, list[tuple[str, np.ndarray, np.ndarray | None, np.ndarray | None]]],
    pulls: list[float],
) -> list[Path]:
    """One PNG per field (each IoV, and the reference dashed), and one of all pulls."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for field, series in curves.items():
        figure, axes = plt.subplots(figsize=(7, 3.5))
        for iov, values, errors, ref in series[:8]:
            x = np.arange(values.size)
            axes.errorbar(x, values, yerr=errors, fmt="o", markersize=3, label=iov)
            if ref is not None and ref.shape == values.shape:
                axes.plot(x, ref, "--", color="grey", linewidth=1)
        axes.set_title(f"{field} per IoV (dashed: reference)")
        axes.set_xlabel("element")
        axes.legend(fontsize=6, ncol=2)
        path = folder / f"{field.replace('.', '_')}.png"
        figure.tight_layout()
        figure.savefig(path, dpi=80)
        plt.close(figure)
        written.append(path)
    if pulls:
        figure, axes = plt.subplots(figsize=(5, 3.5))
        finite = [p for p in pulls if math.isfinite(p)]
        axes.hist(finite, bins=40)
        axes.set_title("pulls against the reference tag")
        axes.set_xlabel("pull")
        path = folder / "pulls.png"
        figure.tight_layout()
        figure.savefig(path, dpi=80)
        plt.close(figure)
        written.append(path)
    return written
