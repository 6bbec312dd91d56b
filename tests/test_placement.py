"""Where a request's calibrations run and when each may start (b2cal.processing.placement):
the rules the flows, the command line and later the dashboard share."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from b2cal.caf.registry import load
from b2cal.db.model import CalibrationRun, Request
from b2cal.db.states import CalRunState, RequestState
from b2cal.processing.placement import computed_at, deferred_now, in_process, waits_for
from b2cal.sites import RequestKind

pytestmark = pytest.mark.unit

S = CalRunState
NAMES = ("ChannelT0", "ChannelGain", "ModuleAlignment", "BeamSpot")
CALIBRATIONS = {name: load(name) for name in NAMES}
NOW = datetime(2026, 12, 2, tzinfo=UTC)


def request(placement: dict[str, str] | None = None) -> Request:
    return Request(
        id=1, kind=RequestKind.PROMPT, site="bnl", exp=1, run_low=1, run_high=8, bucket_id=None,
        calibrations=list(NAMES), input_tags=[], reference_tag=None, staging_tag="staging",
        config={}, open_ended=True, state=RequestState.RUNNING, created=NOW, created_by="",
        updated=NOW, flow_run_id=None, message=None, placement=placement or {},
    )  # fmt: skip


def runs(**states: CalRunState) -> dict[str, CalibrationRun]:
    made = {}
    for number, name in enumerate(NAMES, start=1):
        state = states.get(name, S.PLANNED)
        made[name] = CalibrationRun(
            id=number, request_id=1, calibration=name, state=state, attempt=1, iteration=None,
            result=None, created=NOW, started=None if state is S.PLANNED else NOW, updated=NOW,
            finished=None, flow_run_id=None if state is S.PLANNED else "f", message=None,
        )  # fmt: skip
    return made


def test_everything_at_the_request_site_runs_in_process_those_ready_first() -> None:
    assert in_process(request(), CALIBRATIONS, runs()) == [
        "ChannelT0", "ModuleAlignment", "BeamSpot", "ChannelGain",
    ]  # fmt: skip
    assert deferred_now(request(), CALIBRATIONS, runs()) == ([], {})
    assert computed_at(request(), CALIBRATIONS, runs(), "desy") == []


def test_a_placed_calibration_and_its_dependants_are_deferred() -> None:
    placed = request({"ModuleAlignment": "desy"})
    assert in_process(placed, CALIBRATIONS, runs()) == ["ChannelT0", "ChannelGain"]
    assert computed_at(placed, CALIBRATIONS, runs(), "desy") == ["ModuleAlignment"]
    assert computed_at(placed, CALIBRATIONS, runs(), "bnl") == [
        "ChannelT0", "ChannelGain", "BeamSpot",
    ]  # fmt: skip
    ready, hopeless = deferred_now(placed, CALIBRATIONS, runs())
    assert [r.calibration for r in ready] == ["ModuleAlignment"] and hopeless == {}
    # BeamSpot starts once ModuleAlignment is uploaded, not before, and only once
    waiting = runs(ModuleAlignment=S.AWAITING_SIGNOFF)
    assert deferred_now(placed, CALIBRATIONS, waiting) == ([], {})
    assert waits_for(CALIBRATIONS, waiting, "BeamSpot") == ["ModuleAlignment"]
    uploaded = runs(ModuleAlignment=S.UPLOADED)
    assert [r.calibration for r in deferred_now(placed, CALIBRATIONS, uploaded)[0]] == ["BeamSpot"]
    uploaded["BeamSpot"] = replace(uploaded["BeamSpot"], flow_run_id="starting")  # claimed
    assert deferred_now(placed, CALIBRATIONS, uploaded) == ([], {})
    # a dependency without payloads: never
    failed = runs(ModuleAlignment=S.FAILED)
    assert deferred_now(placed, CALIBRATIONS, failed) == (
        [], {"BeamSpot": "not run: ModuleAlignment ended FAILED"},
    )  # fmt: skip


def test_a_skipped_dependency_brings_its_dependants_back_in_process() -> None:
    placed = request({"ModuleAlignment": "desy"})
    skipped = runs(ModuleAlignment=S.SKIPPED)
    assert in_process(placed, CALIBRATIONS, skipped) == ["BeamSpot", "ChannelT0", "ChannelGain"]
    assert computed_at(placed, CALIBRATIONS, skipped, "desy") == []
    assert deferred_now(placed, CALIBRATIONS, skipped) == ([], {})
