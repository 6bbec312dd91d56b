"""``discover-data``: scan a site's storage, register settled files, close buckets, and start
the prompt request of every closed bucket that has none (a ``process-request`` deployment run),
if the site runs prompt requests; then apply the site's retention rule to finished requests.

Started by hand (the Prefect UI's Run, ``prefect deployment run discover-data/<site>``) it
scans once. Kept going by the site (``for_minutes`` > 0, :mod:`b2cal.orchestrator.discovery_runs`)
it scans every ``[discovery] scan_seconds`` for that long, then starts the next such run and
ends, so a day of discovery is a few dozen runs in the list, not thousands.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime
from functools import partial

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from b2cal.db import discovery
from b2cal.db.database import SYSTEM
from b2cal.errors import B2CalError
from b2cal.orchestrator import discovery_runs
from b2cal.orchestrator.client import prefect_client
from b2cal.processing.retention import clean_finished_requests
from b2cal.requests.operations import create_prompt_request, start_request
from b2cal.sites import RequestKind, Site
from flows.common import records, site_of


def _scan(here: Site, start_requests: bool) -> Counter[str]:
    """One scan; logs what it did when it did something. Returns its counts."""
    log = get_run_logger()
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
    if report.registered or report.late or report.closed or started:
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
    return Counter(
        scans=1,
        registered=len(report.registered),
        late=len(report.late),
        bad=len(report.bad),
        closed=len(report.closed),
        requests=len(started),
    )


@flow(name="discover-data", flow_run_name="discover · {site}")
def discover_data(
    site: str | None = None, start_requests: bool = True, for_minutes: float = 0
) -> dict[str, int]:
    """Scan the site's storage once, or every ``[discovery] scan_seconds`` for ``for_minutes``
    and then hand over to the next discovery run; returns the counts of what it found.

    Args:
        site: The site whose storage is scanned (default: the worker's).
        start_requests: Start the prompt request of every bucket that closes.
        for_minutes: Keep scanning this long (0: one scan).
    """
    here = site_of(site)
    log = get_run_logger()
    totals: Counter[str] = Counter()

    def scan() -> None:
        totals.update(_scan(here, start_requests))

    def still_on() -> bool:
        with prefect_client() as client:
            return discovery_runs.discovery_on(client, here)

    rounds = discovery_runs.Rounds(datetime.now(UTC), for_minutes, here.discovery.scan_seconds)
    clock = partial(datetime.now, UTC)
    if not discovery_runs.run_rounds(
        rounds, scan, clock=clock, sleep=time.sleep, still_on=still_on
    ):
        log.info("discovery of site %s is paused: this run stops", here.name)
    elif for_minutes > 0:  # its time is up: the next run takes over
        following = discovery_runs.keep_going(here, but=str(flow_run.id or ""))
        log.info(
            "%d scans: %d files registered, %d buckets closed, %d requests started; next "
            "discovery run: %s",
            totals["scans"],
            totals["registered"],
            totals["closed"],
            totals["requests"],
            following or "none (discovery is paused, or another run is active)",
        )
    return dict(totals)
