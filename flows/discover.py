"""``discover-data``: scan a site's storage, register settled files, close buckets, and start
the prompt request of every closed bucket that has none (a ``process-request`` deployment run),
if the site runs prompt requests; then apply the site's retention rule to finished requests."""

from __future__ import annotations

from prefect import flow, get_run_logger

from b2cal.db import discovery
from b2cal.db.database import SYSTEM
from b2cal.errors import B2CalError
from b2cal.processing.retention import clean_finished_requests
from b2cal.requests.operations import create_prompt_request, start_request
from b2cal.sites import RequestKind
from flows.common import records, site_of


@flow(name="discover-data", flow_run_name="discover · {site}")
def discover_data(site: str | None = None, start_requests: bool = True) -> dict[str, int]:
    """One scan; returns counts of what it found."""
    log = get_run_logger()
    here = site_of(site)
    with records(here) as (db, _):
        report = discovery.discover(db, here)
        started: list[int] = []
        if start_requests and RequestKind.PROMPT in here.request_kinds:
            for bucket in discovery.awaiting_request(db, here.name):
                try:
                    request = create_prompt_request(db, here, bucket.id, SYSTEM)
                    start_request(db, request, here)
                    started.append(request.id)
                except B2CalError as exc:  # the other buckets still get their requests
                    log.error("%s: no prompt request started: %s", bucket.label, exc)
        for cleaned in clean_finished_requests(db, here):
            log.info(
                "request %d: collector outputs removed by the retention rule (%d files)",
                cleaned.request_id,
                cleaned.files,
            )
    for missing in report.missing_roots:
        log.warning("storage root %s does not exist", missing)
    for bad in report.bad:
        log.warning("bad file: %s", bad)
    log.info(
        "%d files seen, %d registered, %d settling, %d late, %d bad; buckets closed: %s; "
        "requests started: %s",
        report.seen,
        len(report.registered),
        report.settling,
        len(report.late),
        len(report.bad),
        ", ".join(b.label for b in report.closed) or "none",
        ", ".join(map(str, started)) or "none",
    )
    return {
        "seen": report.seen,
        "registered": len(report.registered),
        "settling": report.settling,
        "late": len(report.late),
        "bad": len(report.bad),
        "closed": len(report.closed),
        "requests": len(started),
    }
