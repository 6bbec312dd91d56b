"""Retention: the collector outputs of finished requests go after the site's
``retention.collector_outputs_days``; payloads, records, validation and logs stay.

Collector outputs (each job's merged-input accumulator, ``output.pkl``) are most of a request's
disk and are only needed to recompute an iteration; once a request is DONE and old enough they
are removed. A later rerun of such a request collects again (its job specs are unchanged, but
their outputs are gone, so the jobs run again).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from b2cal.core.files import atomic_write_bytes
from b2cal.db.database import SYSTEM, StateDatabase
from b2cal.db.schema import now
from b2cal.db.states import RequestState
from b2cal.processing.area import RequestArea
from b2cal.sites import Site

log = logging.getLogger("b2cal.processing")

#: Written into a workspace once its collector outputs are gone.
CLEANED = "collector-outputs-removed"


@dataclass(frozen=True)
class Cleaned:
    request_id: int
    files: int
    bytes: int


def clean_finished_requests(
    db: StateDatabase, site: Site, moment: datetime | None = None
) -> list[Cleaned]:
    """Remove the collector outputs of the site's DONE requests older than its retention."""
    moment = moment or now()
    keep = timedelta(days=site.retention.collector_outputs_days)
    cleaned = []
    for request in db.requests(limit=10_000, state=RequestState.DONE):
        if request.site != site.name or moment - request.updated < keep:
            continue
        area = RequestArea(site.request_folder(request.id))
        if not area.root.is_dir() or (area.root / CLEANED).exists():
            continue
        files = size = 0
        for output in area.output.glob("*/iterations/*/jobs/*/output.pkl"):
            size += output.stat().st_size
            output.unlink()
            files += 1
        atomic_write_bytes(area.root / CLEANED, f"{moment.isoformat()} {files} files\n".encode())
        db.log_action(SYSTEM, "retention", f"request {request.id}", "ok",
                      {"files": files, "bytes": size})  # fmt: skip
        log.info("request %d: removed %d collector outputs (%d bytes)", request.id, files, size)
        cleaned.append(Cleaned(request.id, files, size))
    return cleaned
