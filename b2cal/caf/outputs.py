"""A calibration's final output: the basf2-style ``outputdb/`` and a provenance sidecar per
payload, then its validation.

Only the final iteration's payloads go to ``outputdb/``, revisions numbered from 1 by IoV
start. Provenance (who made a payload, from what) is kept beside the payload, never inside it,
so identical constants give identical files and checksums whatever run produced them.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence

from b2cal import __version__
from b2cal.caf.calibration import PayloadDoc, Validation
from b2cal.caf.records import ValidationOutcome
from b2cal.caf.workspace import CalibrationArea
from b2cal.catalog.inputs import FileStamp
from b2cal.core.files import atomic_write_json, canonical_json, sha256sum
from b2cal.core.iov import IoV
from b2cal.core.localdb import PayloadEntry, provenance_path, write_local_database


def inputs_digest(stamps: Sequence[FileStamp]) -> str:
    """A digest of the input files used (path, size, modification time), for provenance."""
    listing = sorted((s.path, s.size, s.mtime_ns) for s in stamps)
    return sha256sum(canonical_json(listing))


def write_final_output(
    area: CalibrationArea,
    payloads: Sequence[tuple[str, IoV, PayloadDoc]],
    *,
    calibration_run: str,
    iteration: int,
    digest: str,
    upstream: Sequence[PayloadEntry],
) -> list[PayloadEntry]:
    """Write ``outputdb/`` and the provenance sidecars of the final payloads."""
    for folder in area.final_output_folders():
        shutil.rmtree(folder, ignore_errors=True)
    entries = write_local_database(area.outputdb, payloads)
    upstream_docs = [
        {
            "name": e.name,
            "revision": e.revision,
            "iov": str(e.iov),
            "checksum": e.checksum,
            "database": str(e.path.parent),
        }
        for e in upstream
    ]
    for entry in entries:
        atomic_write_json(
            provenance_path(entry.path),
            {
                "name": entry.name,
                "revision": entry.revision,
                "iov": str(entry.iov),
                "checksum": entry.checksum,
                "b2cal_version": __version__,
                "calibration": area.name,
                "calibration_run": calibration_run,
                "iteration": iteration,
                "input_files_digest": digest,
                "upstream_payloads": upstream_docs,
            },
        )
    return entries


def validate(
    hook: Validation | None, payloads: Sequence[tuple[str, IoV, PayloadDoc]]
) -> ValidationOutcome | None:
    """Run a calibration's validation hook over its final payloads (None if it has none)."""
    if hook is None:
        return None
    by_name: dict[str, list[PayloadDoc]] = {}
    for name, _, doc in sorted(payloads, key=lambda p: (p[0], p[1].first)):
        by_name.setdefault(name, []).append(doc)
    try:
        report = hook(by_name)
    except Exception as exc:  # a broken hook is a failed validation, not a crashed run
        return ValidationOutcome(
            passed=False, message=f"validation raised {type(exc).__name__}: {exc}"
        )
    return ValidationOutcome(passed=report.passed, metrics=report.metrics, message=report.message)
