"""What a request's runs leave in the Prefect UI as artifacts, built here as plain values (the
flows only hand them to Prefect), so what an expert reads is tested without a server.

Each validated calibration leaves two: its validation report (markdown, the plots inside) and
its constants per IoV (a table); each ``process-request`` run leaves a summary of its request.
Keys and descriptions name the request, its bucket, the calibration and its iteration, so the
UI's artifact list says what each is without opening it; a key stays the same when a run is
made again, and Prefect keeps the earlier ones as older versions of it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from b2cal.cdb.model import PayloadIoV, TagState
from b2cal.cdb.store import ConditionsStore
from b2cal.db.database import StateDatabase
from b2cal.db.model import Bucket, CalibrationRun, Request
from b2cal.db.states import CalRunState
from b2cal.errors import CdbError
from b2cal.orchestrator.labels import artifact_key, bucket_of, request_heading
from b2cal.processing.validation import Validation


@dataclass(frozen=True)
class MarkdownArtifact:
    key: str
    description: str
    markdown: str


@dataclass(frozen=True)
class TableArtifact:
    key: str
    description: str
    rows: list[dict[str, str]]


def _iteration(calrun: CalibrationRun) -> str:
    """`` · iteration 1``: the last iteration the engine ran (numbered from 0, as the
    ``algorithm · X · iter 1`` task runs are), and the attempt when it is a rerun."""
    said = "" if calrun.iteration is None else f" · iteration {calrun.iteration}"
    return said + (f" · attempt {calrun.attempt}" if calrun.attempt > 1 else "")


def validation_artifacts(
    request: Request, bucket: Bucket | None, calrun: CalibrationRun, validation: Validation
) -> tuple[MarkdownArtifact, TableArtifact]:
    """The validation report, its plots embedded (the UI cannot read the worker's files), and
    the constants per IoV as a table of formatted text."""
    title = f"{request_heading(request, bucket)} · {calrun.calibration}{_iteration(calrun)}"
    key = artifact_key("request", request.id, calrun.calibration)
    report = MarkdownArtifact(
        f"{key}-validation",
        f"{title}: validation {validation.verdict}",
        validation.markdown(f"{title}: validation {validation.verdict}", embed=True),
    )
    table = TableArtifact(
        f"{key}-constants", f"{title}: constants per IoV ({validation.verdict})", validation.table()
    )
    return report, table


def validation_artifacts_of(
    db: StateDatabase, request_id: int, calibration: str, validation: Validation
) -> tuple[MarkdownArtifact, TableArtifact]:
    """:func:`validation_artifacts` of a calibration run as the state database has it."""
    request = db.request(request_id)
    calrun = db.calibration_run_of(request_id, calibration)
    return validation_artifacts(request, bucket_of(db, request), calrun, validation)


@dataclass(frozen=True)
class Staging:
    """The request's staging tag as the conditions database has it (``state`` None: the tag
    does not exist, e.g. the request was never planned)."""

    tag: str
    state: TagState | None
    entries: Sequence[PayloadIoV] = ()


def staging_of(store: ConditionsStore, request: Request) -> Staging:
    try:
        state = store.tag(request.staging_tag).state
        return Staging(request.staging_tag, state, store.iovs(request.staging_tag))
    except CdbError:
        return Staging(request.staging_tag, None)


def _uploaded_by(entry: PayloadIoV, calibrations: Sequence[str]) -> str:
    """The calibration whose payload ``entry`` is: its provenance says, else its name."""
    made = entry.payload.provenance.get("calibration")
    if isinstance(made, str):
        return made
    return entry.name if entry.name in calibrations else "other"


def _validation_cell(calrun: CalibrationRun) -> str:
    summary = calrun.summary or {}
    if not summary:
        return ""
    flagged = sum(int(f.get("flagged") or 0) for f in summary.get("fields", []))
    verdict = "passed" if summary.get("passed") else "FAILED"
    return verdict + (f", {flagged} pulls > 5" if flagged else "")


def request_summary(
    request: Request,
    bucket: Bucket | None,
    calruns: Sequence[CalibrationRun],
    staging: Staging,
    now: datetime | None = None,
) -> MarkdownArtifact:
    """What the request's run did: each calibration, where it ran, its state and iterations,
    its validation, and its payloads and IoVs in the staging tag; then the staging tag as a
    whole and what went wrong. It says when it was made: sign-offs and calibrations at other
    sites go on after the ``process-request`` run that makes it."""
    heading = request_heading(request, bucket)
    names = [c.calibration for c in calruns]
    per_payload: dict[str, set[tuple[str, int]]] = {}
    per_iov: Counter[str] = Counter()
    for entry in staging.entries:
        made = _uploaded_by(entry, names)
        per_payload.setdefault(made, set()).add((entry.name, entry.payload.revision))
        per_iov[made] += 1
    placed = any(request.site_of(name) != request.site for name in names)
    headers = ["calibration", *(["site"] if placed else []), "state", "iterations",
               "validation", "payloads", "IoVs"]  # fmt: skip
    lines = [
        f"# {heading}: {request.state.value}",
        "",
        f"{request.kind.value.capitalize()} request of experiment {request.exp}, runs "
        f"{request.run_low}-{request.run_high}, at site {request.site}. Reference tag: "
        f"{request.reference_tag or 'the site running tag'}. Input tags: "
        f"{', '.join(request.input_tags) or 'none'}.",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "---|" * len(headers),
    ]
    for calrun in calruns:
        name = calrun.calibration
        iterations = "" if calrun.iteration is None else str(calrun.iteration + 1)
        cells = [name, *([request.site_of(name)] if placed else []), calrun.state.value,
                 iterations, _validation_cell(calrun), str(len(per_payload.get(name, ()))),
                 str(per_iov[name])]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    passed = [c.calibration for c in calruns if (c.summary or {}).get("passed")]
    lines.append(f"Passed validation: {', '.join(passed) or 'none'}.")
    lines.append("")
    if staging.state is None:
        lines.append(f"Staging tag {staging.tag}: not created.")
    else:
        payloads = sum(len(p) for p in per_payload.values())
        lines.append(
            f"Payloads went to the staging tag **{staging.tag}** ({staging.state.value}): "
            f"{payloads} payloads, {len(staging.entries)} IoVs."
        )
    lines.append("")
    said = [(c.calibration, c.message) for c in calruns if c.message]
    if request.message:
        said.insert(0, ("request", request.message))
    if said:
        lines += ["What they said last:", "", *(f"- {who}: {line}" for who, line in said), ""]
    moment = (now or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M:%S UTC")
    lines.append(f"As of {moment}, the end of its process-request run.")
    uploaded = sum(1 for c in calruns if c.state is CalRunState.UPLOADED)
    description = (
        f"{heading}: {request.state.value}, {uploaded} of {len(calruns)} calibrations "
        f"uploaded to {staging.tag}"
    )
    return MarkdownArtifact(
        artifact_key("request", request.id, "summary"), description, "\n".join(lines) + "\n"
    )


def request_summary_of(
    db: StateDatabase, store: ConditionsStore, request_id: int
) -> MarkdownArtifact:
    """:func:`request_summary` of the request as the databases have it now."""
    request = db.request(request_id)
    return request_summary(
        request, bucket_of(db, request), db.calibration_runs(request_id), staging_of(store, request)
    )
