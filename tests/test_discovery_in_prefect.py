"""Discovery on the session stack as a site runs it: off until its deployment is resumed, then
one long ``discover · bnl`` run at a time that scans every ``scan_seconds`` and hands over to
the next when its ``run_minutes`` are up (the test site: 2 s and half a minute), never a
pre-scheduled run with a random name; paused again, it stops at its next scan."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from prefect_stack import Stack, wait_until

from b2cal.db import discovery
from b2cal.orchestrator import discovery_runs
from b2cal.sites import load_site
from b2cal.toy.generate import generate_toy

pytestmark = [pytest.mark.stack, pytest.mark.usefixtures("in_stack")]


def discovery_flow_runs() -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        found = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["discover-data"]))
        )
    return [run for run in found if "site:bnl" in run.tags]


def test_discovery_is_one_long_run_at_a_time_and_hands_over(stack: Stack, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentUpdate

    site = load_site("bnl")
    before = {str(run.id) for run in discovery_flow_runs()}
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("discover-data/bnl")
        assert deployment.paused, "prefect.yaml deploys discovery paused"
        # buckets that other tests closed keep their own requests: only files here
        client.update_deployment(
            deployment.id,
            DeploymentUpdate(parameters={"site": "bnl", "start_requests": False}),
        )
    assert discovery_runs.keep_going(site) is None  # paused: nothing starts
    with get_client(sync_client=True) as client:  # an older b2cal's schedule, still there
        from prefect.client.schemas.actions import DeploymentScheduleCreate
        from prefect.client.schemas.schedules import IntervalSchedule

        client.create_deployment_schedules(
            deployment.id,
            [DeploymentScheduleCreate(schedule=IntervalSchedule(interval=30), active=True)],
        )
    discovery_runs.switch(site, on=True)
    with get_client(sync_client=True) as client:  # gone: no runs made ahead of time
        assert client.read_deployment_schedules(deployment.id) == []
    try:
        # the site's reconciler starts the first run within a pass (2 s here)
        first = wait_until(
            lambda: [r for r in discovery_flow_runs()
                     if str(r.id) not in before and r.state and r.state.name == "Running"],
            120, "a discovery run to be running",
        )[0]  # fmt: skip
        assert first.name == "discover · bnl"
        # a file lands (moved in whole, as a transfer does) and is registered by that run
        generate_toy(tmp_path / "toy", 14, [1], files_per_run=1, events=200, seed=14)
        landed = stack.home / "storage-bnl" / "e0014"
        landed.parent.mkdir(exist_ok=True)
        t_landed = time.monotonic()
        (tmp_path / "toy" / "e0014").rename(landed)

        def registered() -> bool:
            with stack.db() as db:
                return any("e0014" in f.path for f in discovery.files(db, "bnl"))

        wait_until(registered, 60, "the landed file to be registered")
        print(f"landed -> registered: {time.monotonic() - t_landed:.1f} s (scan every 2 s)")
        # the run's time is up (half a minute): it hands over to the next one, itself
        wait_until(
            lambda: len([r for r in discovery_flow_runs() if str(r.id) not in before]) >= 2,
            120, "the first discovery run to hand over",
        )  # fmt: skip
    finally:
        discovery_runs.switch(site, on=False)

    def all_ended() -> bool:
        return all(r.state and r.state.is_final() for r in discovery_flow_runs())

    wait_until(all_ended, 120, "the discovery runs to stop once paused")
    ours = [r for r in discovery_flow_runs() if str(r.id) not in before]
    # one run per half minute and the one it handed over to, not one per scan (2 s)
    assert 2 <= len(ours) <= 4, [(r.name, r.state_name) for r in ours]
    assert {r.name for r in ours} == {"discover · bnl"}
    assert not any(r.auto_scheduled for r in ours)
    assert all(r.state_name == "Completed" for r in ours), [r.state_name for r in ours]
