"""A calibration's final output: the basf2-style ``outputdb/``, provenance, ``result.json``.

Layout under ``<output>/<Calibration>/`` (DESIGN.md §5.2)::

    outputdb/database.txt                 final payloads only, revisions from 1 by IoV start
    outputdb/dbstore_<Name>_rev_<r>.json  the constants, nothing else
    provenance/dbstore_<Name>_rev_<r>.json  who made the payload, from what (the sidecar)
    result.json                           the calibration's outcome; written last
    iterations/<i>/...                    every iteration's jobs and payloads

Provenance lives beside the payload, never inside it, so identical constants give identical
files and checksums whatever run produced them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from b2cal import __version__
from b2cal.caf.atomic_file import atomic_write_json
from b2cal.caf.calibration import AlgorithmResult, PayloadDoc, ValidationReport
from b2cal.caf.collection import BadFile
from b2cal.caf.iov import IoV
from b2cal.caf.localdb import PayloadEntry, payload_filename, write_local_database
from b2cal.catalog.storage import InputFile

OUTPUTDB = "outputdb"
PROVENANCE = "provenance"
RESULT = "result.json"


@dataclass
class CalibrationOutcome:
    """How a calibration ended: the row of the final table, and ``result.json``."""

    name: str
    result: AlgorithmResult
    iterations: int = 0
    iovs: list[IoV] = field(default_factory=list)
    message: str = ""
    converged: bool | None = None
    events: int = 0
    jobs: int = 0
    bad_files: list[BadFile] = field(default_factory=list)
    validation: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "calibration": self.name,
            "result": self.result.value,
            "iterations": self.iterations,
            "iovs": [str(iov) for iov in self.iovs],
            "message": self.message,
            "converged": self.converged,
            "events": self.events,
            "jobs": self.jobs,
            "bad_files": [{"path": b.path, "reason": b.reason} for b in self.bad_files],
            "validation": self.validation,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> CalibrationOutcome:
        return cls(
            name=doc["calibration"],
            result=AlgorithmResult(doc["result"]),
            iterations=doc["iterations"],
            iovs=[IoV.parse(text) for text in doc["iovs"]],
            message=doc["message"],
            converged=doc["converged"],
            events=doc["events"],
            jobs=doc["jobs"],
            bad_files=[BadFile(**b) for b in doc["bad_files"]],
            validation=doc["validation"],
        )


def files_digest(files: Sequence[InputFile]) -> str:
    """A digest of the input files (path and size), for provenance and resume checks."""
    digest = hashlib.sha256()
    for file in sorted(files):
        size = file.path.stat().st_size if file.path.exists() else -1
        digest.update(f"{file.path}\t{size}\n".encode())
    return digest.hexdigest()


def write_final_output(
    directory: Path,
    payloads: Sequence[tuple[str, IoV, PayloadDoc]],
    *,
    calibration: str,
    calibration_run: str,
    iteration: int,
    inputs_digest: str,
    upstream: Sequence[PayloadEntry],
) -> list[PayloadEntry]:
    """Write ``outputdb/`` and the provenance sidecars of the final payloads."""
    for sub in (OUTPUTDB, PROVENANCE):
        shutil.rmtree(directory / sub, ignore_errors=True)
    entries = write_local_database(directory / OUTPUTDB, payloads)
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
            directory / PROVENANCE / payload_filename(entry.name, entry.revision),
            {
                "name": entry.name,
                "revision": entry.revision,
                "iov": str(entry.iov),
                "checksum": entry.checksum,
                "b2cal_version": __version__,
                "calibration": calibration,
                "calibration_run": calibration_run,
                "iteration": iteration,
                "input_files_digest": inputs_digest,
                "upstream_payloads": upstream_docs,
            },
        )
    return entries


def validate(hook: Any, payloads: Sequence[tuple[str, IoV, PayloadDoc]]) -> dict[str, Any] | None:
    """Run a calibration's validation hook over its final payloads (None if it has none)."""
    if hook is None:
        return None
    by_name: dict[str, list[PayloadDoc]] = {}
    for name, _, doc in sorted(payloads, key=lambda p: (p[0], p[1].first)):
        by_name.setdefault(name, []).append(doc)
    try:
        report: ValidationReport = hook(by_name)
    except Exception as exc:  # a broken hook is a failed validation, not a crashed run
        return {"passed": False, "message": f"validation raised {type(exc).__name__}: {exc}"}
    return {"passed": report.passed, "metrics": report.metrics, "message": report.message}


def read_outcome(directory: Path) -> CalibrationOutcome | None:
    path = directory / RESULT
    if not path.exists():
        return None
    return CalibrationOutcome.from_json(json.loads(path.read_text()))


def write_outcome(directory: Path, outcome: CalibrationOutcome) -> None:
    atomic_write_json(directory / RESULT, outcome.to_json())


def bad_files_of(outcomes: Mapping[str, CalibrationOutcome]) -> list[tuple[str, BadFile]]:
    """Every bad input file, once per calibration that met it."""
    return [(name, bad) for name, o in outcomes.items() for bad in o.bad_files]
