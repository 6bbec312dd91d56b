"""Discovery kept going on a site: one long ``discover-data`` run at a time, not a schedule.

A file that lands should be registered within seconds, but a flow run per scan would bury the
calibration runs in the Prefect UI (a scan every 30 s is ~2,900 runs a day), and Prefect's
scheduler fills the list ahead of time with runs named by random slugs. So a discovery run
scans every ``[discovery] scan_seconds`` for ``run_minutes`` (:class:`Rounds`), then hands
over to the next one, which it starts itself just before it ends (:func:`keep_going`); the
site's reconciler starts one whenever none is active (the first, or after a crash). A day
therefore adds ``24 * 60 / run_minutes`` discovery runs to the list (48 at the defaults), each
named ``discover · <site>``.

The switch is the ``discover-data/<site>`` deployment's own *paused* flag, the toggle a person
sees in the Prefect UI (a deploy leaves it on, as Prefect does): ``b2cal server up
--discover`` resumes it for the sites it serves (``--no-discover`` pauses it), and a run in
progress ends at its next scan once it is paused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from b2cal.orchestrator.client import deployment, prefect_client, start_deployment_run
from b2cal.sites import Site

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient

FLOW = "discover-data"
#: Flow-run states in which a discovery run still counts as the site's one.
ACTIVE = ("SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING")


@dataclass(frozen=True)
class Rounds:
    """When a discovery run scans: at once, then every ``scan_seconds`` while another scan
    still fits before ``started + run_minutes``."""

    started: datetime
    run_minutes: float
    scan_seconds: float

    @property
    def deadline(self) -> datetime:
        return self.started + timedelta(minutes=self.run_minutes)

    def next_wait(self, now: datetime) -> float | None:
        """Seconds to wait before the next scan, or None when the run should end now."""
        if now + timedelta(seconds=self.scan_seconds) > self.deadline:
            return None
        return self.scan_seconds


def run_rounds(
    rounds: Rounds,
    scan: Callable[[], None],
    *,
    clock: Callable[[], datetime],
    sleep: Callable[[float], None],
    still_on: Callable[[], bool],
) -> bool:
    """Scan at once and then as ``rounds`` says; True when the run's time is up (it hands
    over to the next), False when discovery was turned off meanwhile (``still_on``, asked
    before each wait). Time is a parameter, so a day of it can be run in a test."""
    while True:
        scan()
        wait = rounds.next_wait(clock())
        if wait is None:
            return True
        if not still_on():
            return False
        sleep(wait)


def run_name(site: Site) -> str:
    return f"discover · {site.name}"


def discovery_on(client: SyncPrefectClient, site: Site) -> bool:
    """Whether the site's discovery deployment exists and is not paused."""
    from prefect.exceptions import ObjectNotFound

    try:
        found = client.read_deployment_by_name(deployment(FLOW, site))
    except ObjectNotFound:
        return False
    return not found.paused


#: A discovery run not RUNNING this long past its ``run_minutes`` no longer counts as the
#: site's one (stuck PENDING on a host that died, CANCELLING for ever): discovery goes on.
STALE_SECONDS = 600


def active_runs(client: SyncPrefectClient, site: Site, now: datetime | None = None) -> list[str]:
    """The ids of the site's discovery runs that have not ended (runs a Prefect schedule
    made ahead of time, from an older b2cal, and stale ones left out)."""
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterName,
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    runs = client.read_flow_runs(
        flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW])),
        deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[site.name])),
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(
                type=FlowRunFilterStateType(any_=[StateType(s) for s in ACTIVE])
            )
        ),
        limit=20,
    )
    moment = now or datetime.now(UTC)
    limit = timedelta(minutes=site.discovery.run_minutes, seconds=STALE_SECONDS)
    return [
        str(run.id)
        for run in runs
        if not run.auto_scheduled
        and run.state is not None
        and (run.state.name == "Running" or moment - run.state.timestamp < limit)
    ]


def keep_going(site: Site, but: str | None = None) -> str | None:
    """Start the site's next discovery run if discovery is on and none is active (``but``,
    the run that calls this to hand over, does not count); its flow-run id, or None."""
    with prefect_client() as client:
        if not discovery_on(client, site):
            return None
        if [run for run in active_runs(client, site) if run != but]:
            return None
    return start_deployment_run(
        deployment(FLOW, site),
        {"site": site.name, "for_minutes": site.discovery.run_minutes},
        [f"site:{site.name}"],
        run_name=run_name(site),
    )


def switch(site: Site, on: bool) -> None:
    """Turn the site's discovery on (resume its deployment) or off (pause it)."""
    with prefect_client() as client:
        found = client.read_deployment_by_name(deployment(FLOW, site))
        # an older b2cal deployed discovery with a schedule, which Prefect keeps across
        # deploys: it would fill the list with random-named runs ahead of time again
        for schedule in client.read_deployment_schedules(found.id):
            client.delete_deployment_schedule(found.id, schedule.id)
        if on and found.paused:
            client.resume_deployment(found.id)
        elif not on and not found.paused:
            client.pause_deployment(found.id)
