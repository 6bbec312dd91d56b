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

import base64
import json
import math
from collections.abc import Iterable, Mapping
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
#: Significant figures of the constants in reports: enough to see a change against the
#: reference at the level of the errors, few enough that a table fits a browser's width.
DIGITS = 4
#: Resolution of the plots: about 560 x 260 pixels each, some 20 kB as PNG, so that a report
#: with its plots inside (a Prefect artifact) stays well under a megabyte.
PLOT_DPI = 80
#: Plotted IoVs per field at most: more series than this make a plot no one can read.
PLOTTED_IOVS = 8
#: Bytes of plots (as base64) one embedded report may hold; plots beyond are named instead,
#: so that a calibration with many fields cannot put megabytes into Prefect's database.
EMBED_LIMIT = 1_500_000


def significant(value: float | None, digits: int = DIGITS, sign: bool = False) -> str:
    """``value`` to ``digits`` significant figures as a report shows it (``0.6748``,
    ``1.235e4``, ``-3.1e-5``); empty for None. ``sign``: always signed (a change)."""
    if value is None:
        return ""
    if not math.isfinite(value):
        return str(value)
    # "#": trailing zeros kept (-19.60, not -19.6), so every value shows its figures
    text = format(value, f"{'+' if sign else ''}#.{digits}g")
    mantissa, _, exponent = text.partition("e")
    mantissa = mantissa.rstrip(".")  # 1234. -> 1234
    # 1.235e+04 -> 1.235e4: narrower, as physicists write it
    return f"{mantissa}e{int(exponent)}" if exponent else mantissa


def data_uri(png: Path) -> str:
    """A PNG file as a ``data:`` URI: an image that a page served over HTTP (the Prefect UI)
    can show, where a ``file://`` link to the worker's disk shows nothing."""
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


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
    #: The field's unit as the calibration declares it (None: not declared, or none).
    unit: str | None = None


class Validation(BaseModel):
    calibration: str
    passed: bool
    problems: list[str]
    reference_tag: str | None
    fields: list[FieldSummary]
    plots: list[str]

    @property
    def verdict(self) -> str:
        return "passed" if self.passed else "FAILED"

    def markdown(self, title: str | None = None, *, embed: bool = False) -> str:
        """The report as Markdown, headed ``title`` (default: the calibration and verdict).

        Written to ``validation.md`` it links its plots by file name (they lie beside it);
        with ``embed`` (a Prefect artifact) the plots are inside it as ``data:`` URIs, since
        the UI is a web page that cannot read the worker's files — up to
        :data:`EMBED_LIMIT` bytes, later plots named instead."""
        lines = [f"# {title or f'{self.calibration}: validation {self.verdict}'}", ""]
        lines += [f"- problem: {p}" for p in self.problems]
        if self.problems:
            lines.append("")
        reference = self.reference_tag or "none (no reference tag)"
        lines += [f"Reference tag: {reference}", ""]
        rows = self.table()
        if rows:
            lines += [
                _markdown_row(rows[0]),
                "|" + "---|" * len(rows[0]),
                *(_markdown_row(row.values()) for row in rows),
                "",
                "change: mean change against the reference tag's payload; pull: "
                "(new − reference) / √(σ²new + σ²reference) per element, "
                f"flagged beyond {PULL_FLAG:g}.",
                "",
            ]
        room = EMBED_LIMIT
        for plot in map(Path, self.plots):
            if not embed:
                lines += [f"![{plot.stem}]({plot.name})", ""]
                continue
            uri = data_uri(plot) if plot.is_file() else ""
            if uri and len(uri) <= room:
                room -= len(uri)
                lines += [f"![{plot.stem}]({uri})", ""]
            else:
                lines += [f"plot {plot.name} not embedded (too large, or gone): {plot}", ""]
        if not self.plots:
            lines += ["no plots: there are no payload constants to plot", ""]
        return "\n".join(lines).rstrip("\n") + "\n"

    def table(self) -> list[dict[str, str]]:
        """The constants per IoV as rows of text (a Prefect table artifact, the table of the
        report): significant figures, units beside the field's name, and the payload's name
        left out where it is the calibration's own, so that the table fits a browser."""
        rows = []
        for f in self.fields:
            name = f.field.removeprefix(f"{self.calibration}.")
            rows.append(
                {
                    "IoV": f.iov,
                    "field": f"{name} [{f.unit}]" if f.unit else name,
                    "n": str(f.size),
                    "mean": significant(f.mean),
                    "min": significant(f.min) if f.size > 1 else "",  # the mean, else
                    "max": significant(f.max) if f.size > 1 else "",
                    "change": significant(f.change, sign=True),
                    "max |pull|": significant(f.max_abs_pull, 3),
                    "flagged": str(f.flagged) if f.flagged else "",
                }
            )
        return rows


def _markdown_row(cells: Iterable[str]) -> str:
    """A Markdown table row; a ``|`` inside a cell (``max |pull|``) escaped, since it would
    end the cell and leave the table with rows of the wrong width (shown as plain text)."""
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


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


#: What a field's plot shows of one IoV: the IoV, the values, their errors, the reference.
_Series = tuple[str, np.ndarray, np.ndarray | None, np.ndarray | None]


def validate_output(
    calibration: str,
    outputdb: Path,
    folder: Path,
    store: ConditionsStore | None,
    reference_tag: str | None,
    *,
    reference_required: bool = False,
    units: Mapping[str, str] | None = None,
) -> Validation:
    """Validate ``outputdb`` against ``reference_tag``; report and plots go to ``folder``.

    A reference tag that does not exist fails the validation when it was asked for by name
    (``reference_required``); the site's default reference may not exist yet (a new site),
    and then there is nothing to compare with. ``units`` are the calibration's
    (:attr:`b2cal.caf.Calibration.units`): field or ``Payload.field`` -> unit, for the report.
    """
    units = units or {}
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
    curves: dict[tuple[str, str], list[_Series]] = {}
    shown_units: dict[tuple[str, str], str | None] = {}
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
                unit=units.get(f"{entry.name}.{key}", units.get(key)),
            )
            shown_units[(entry.name, key)] = summary.unit
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
            curves.setdefault((entry.name, key), []).append(
                (str(entry.iov), values, fields.get(f"{key}_err"), ref)
            )
    plots = _plots(folder, curves, shown_units, pulls)
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
    curves: dict[tuple[str, str], list[_Series]],
    units: Mapping[tuple[str, str], str | None],
    pulls: list[float],
) -> list[Path]:
    """The plots of a validation, small (:data:`PLOT_DPI`): one per field of many elements
    (each IoV a series over the elements, the reference dashed); one per payload for its
    fields of one element (the constants per IoV, the reference as crosses), so a payload of
    scalars such as a beam spot is seen moving from IoV to IoV; and one of all pulls."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []

    def save(figure: Any, name: str) -> None:
        path = folder / f"{name}.png"
        figure.tight_layout()
        figure.savefig(path, dpi=PLOT_DPI)
        plt.close(figure)
        written.append(path)

    def label(payload: str, key: str) -> str:
        unit = units.get((payload, key))
        return f"{key} [{unit}]" if unit else key

    scalars: dict[str, list[str]] = {}
    for (payload, key), series in curves.items():
        if all(values.size == 1 for _, values, _, _ in series):
            scalars.setdefault(payload, []).append(key)
            continue
        figure, axes = plt.subplots(figsize=(7, 3.2))
        for iov, values, errors, ref in series[:PLOTTED_IOVS]:
            x = np.arange(values.size)
            axes.errorbar(x, values, yerr=errors, fmt="o", markersize=3, label=iov)
            if ref is not None and ref.shape == values.shape:
                axes.plot(x, ref, "--", color="grey", linewidth=1)
        shown = "" if len(series) <= PLOTTED_IOVS else f" (first {PLOTTED_IOVS} of {len(series)})"
        axes.set_title(f"{payload}.{key} per IoV{shown} (dashed: reference)")
        axes.set_xlabel("element")
        axes.set_ylabel(label(payload, key))
        axes.legend(  # beside the plot, where it hides no point
            fontsize=6, title="IoV", title_fontsize=6, loc="upper left", bbox_to_anchor=(1, 1)
        )
        save(figure, f"{payload}_{key}")
    for payload, keys in scalars.items():
        iovs = list(dict.fromkeys(iov for key in keys for iov, *_ in curves[(payload, key)]))
        figure, rows = plt.subplots(
            len(keys), 1, figsize=(7, 0.6 + 1.5 * len(keys)), sharex=True, squeeze=False
        )
        for axes, key in zip(rows[:, 0], keys, strict=True):
            series = curves[(payload, key)]
            axes.errorbar(
                [iovs.index(iov) for iov, *_ in series],
                [v[0] for _, v, _, _ in series],
                yerr=[0.0 if e is None else e[0] for _, _, e, _ in series],
                fmt="o",
                markersize=3,
            )
            refs = [  # a reference of another shape is no reference for this field
                (iovs.index(iov), r[0])
                for iov, v, _, r in series
                if r is not None and r.shape == v.shape
            ]
            if refs:
                axes.plot(*zip(*refs, strict=True), "x", color="grey")
            axes.set_ylabel(label(payload, key), fontsize=8)
        rows[0, 0].set_title(f"{payload} per IoV (crosses: reference)")
        bottom = rows[-1, 0]
        bottom.set_xticks(np.arange(len(iovs)))
        bottom.set_xticklabels(iovs, fontsize=7, rotation=30 if len(iovs) > 6 else 0)
        bottom.set_xlabel("IoV")
        save(figure, f"{payload}_per_iov")
    if pulls:
        figure, axes = plt.subplots(figsize=(5, 3.2))
        finite = [p for p in pulls if math.isfinite(p)]
        axes.hist(finite, bins=40)
        axes.set_title("pulls against the reference tag")
        axes.set_xlabel("pull")
        save(figure, "pulls")
    return written
