"""Discovery kept going by long runs (b2cal.orchestrator.discovery_runs), with time a
parameter: a simulated day at the local site's defaults adds at most 48 discovery runs to the
Prefect UI's list, and a file is registered within a minute of landing all the same."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from b2cal.orchestrator.discovery_runs import Rounds, run_rounds
from b2cal.sites import load_site

pytestmark = pytest.mark.unit
T0 = datetime(2026, 12, 7, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def test_one_run_scans_every_scan_seconds_until_its_time_is_up() -> None:
    clock, scans = Clock(), []
    rounds = Rounds(T0, run_minutes=1, scan_seconds=15)
    handed_over = run_rounds(
        rounds, lambda: scans.append(clock.now), clock=clock, sleep=clock.sleep,
        still_on=lambda: True,
    )  # fmt: skip
    assert handed_over
    assert [(s - T0).total_seconds() for s in scans] == [0, 15, 30, 45, 60]


def test_a_single_scan_when_run_minutes_is_zero() -> None:
    clock, scans = Clock(), []
    assert run_rounds(Rounds(T0, 0, 15), lambda: scans.append(1), clock=clock,
                      sleep=clock.sleep, still_on=lambda: True)  # fmt: skip
    assert scans == [1]


def test_turned_off_the_run_stops_at_its_next_scan() -> None:
    clock, scans = Clock(), []
    on = iter([True, True, False])
    handed_over = run_rounds(Rounds(T0, 30, 15), lambda: scans.append(1), clock=clock,
                             sleep=clock.sleep, still_on=lambda: next(on))  # fmt: skip
    assert not handed_over and len(scans) == 3


@pytest.mark.parametrize("hours", [1, 24])
def test_a_simulated_stretch_at_the_local_defaults(hours: int) -> None:
    """Runs hand over to the next (which starts ``handover`` seconds later: a worker's poll
    and the process start); files land every 7 minutes and settle for ``settle_seconds``.
    Every scan registers what has settled by then."""
    site = load_site("local")  # the site file the demo uses
    settle, scan_seconds = site.settle_seconds, site.discovery.scan_seconds
    handover = 8.0
    end = T0 + timedelta(hours=hours)
    landed = [T0 + timedelta(minutes=7 * i, seconds=13) for i in range(hours * 60 // 7)]
    registered: dict[datetime, datetime] = {}
    clock, runs = Clock(), 0

    def scan() -> None:
        for when in landed:
            if when not in registered and clock.now >= when + timedelta(seconds=settle):
                registered[when] = clock.now

    while clock.now < end:
        runs += 1
        rounds = Rounds(clock.now, site.discovery.run_minutes, scan_seconds)
        run_rounds(rounds, scan, clock=clock, sleep=clock.sleep, still_on=lambda: True)
        clock.sleep(handover)
    assert runs <= 48 * hours / 24 + 1, runs  # the promise: 48 a day at the local defaults
    latencies = [(registered[w] - w).total_seconds() for w in landed if w in registered]
    assert len(latencies) == len(landed)
    assert max(latencies) < 60, max(latencies)  # the promise at the local site
