"""``sign-off``: act on a decision someone recorded (``b2cal signoff``, later the dashboard).

Short by design: the decision is already in the state database and its action log; this flow
uploads every approved calibration of the request that may be uploaded now (its dependencies
uploaded or skipped) and moves the staging tag to TESTING when the request is complete, then
starts the deferred calibrations that this made ready (a dependant placed at another site).
Run it twice and the second run uploads nothing.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from b2cal.requests.deferred import upload_and_advance
from flows.common import records, site_of


@flow(name="sign-off", flow_run_name="sign-off · calibration run {calibration_run_id}")
def signoff(calibration_run_id: int, site: str | None = None) -> list[str]:
    """Upload what the decision on ``calibration_run_id`` allows; returns what was uploaded."""
    log = get_run_logger()
    here = site_of(site)
    with records(here) as (db, store):
        calrun = db.calibration_run(calibration_run_id)
        report, started = upload_and_advance(db, store, here, calrun.request_id)
    for name, why in report.blocked.items():
        log.info("%s not uploaded: %s", name, why)
    for what in started:
        log.info("started %s", what)
    log.info(
        "uploaded: %s; staging tag is %s",
        ", ".join(report.uploaded) or "nothing",
        report.staging_tag_state,
    )
    return report.uploaded
