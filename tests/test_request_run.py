"""A processing request's run at its site (b2cal.requests.run), without Prefect:
begun (its flow run recorded, its title and tags; a cancelled request refused), a plan that
fails leaves the request FAILED saying why, and the end gives the request's state."""

from __future__ import annotations

from pathlib import Path

import pytest
from calibration_runs import started_request

from b2cal.cdb.embedded import EmbeddedStore
from b2cal.db.database import StateDatabase
from b2cal.db.states import CalRunState, RequestState
from b2cal.errors import B2CalError, StateConflict
from b2cal.requests import run as request_run
from b2cal.sites import RequestKind, Site

pytestmark = pytest.mark.unit


def test_a_request_run_begins_plans_and_ends(tmp_path: Path) -> None:
    site = Site(name="lab", storage_roots=[tmp_path / "storage"], work_root=tmp_path / "work")
    with (
        StateDatabase(f"sqlite:///{tmp_path / 'state.sqlite'}") as db,
        EmbeddedStore(f"sqlite:///{tmp_path / 'cdb.sqlite'}", tmp_path / "payloads") as store,
    ):
        made = db.create_request(
            kind=RequestKind.PROMPT, site="lab", exp=3, run_low=1, run_high=8,
            calibrations=["ChannelT0"], input_tags=[],
        )  # fmt: skip
        begun = request_run.begin(db, made.id, "flow-run-1")
        assert begun.title == f"e3 r1-8 (request {made.id})"
        assert begun.tags == [f"request:{made.id}", "kind:prompt", "site:lab", "exp:3"]
        assert db.request(made.id).flow_run_id == "flow-run-1"
        with pytest.raises(B2CalError, match="no registered data at site lab"):
            request_run.plan(db, store, site, made.id)  # nothing landed in its storage
        failed = db.request(made.id)
        assert failed.state is RequestState.FAILED and failed.message.startswith("not planned: ")  # type: ignore[union-attr]

        runs = started_request(db, ("ChannelT0",), site="lab")
        request_id = db.calibration_run(runs["ChannelT0"]).request_id
        for state in (CalRunState.VALIDATING, CalRunState.APPROVED):
            db.move(runs["ChannelT0"], state)
        store.create_tag(db.request(request_id).staging_tag)
        db.move(runs["ChannelT0"], CalRunState.UPLOADED)  # what the upload does
        assert request_run.end(db, store, site, request_id).state is RequestState.DONE
        again = db.calibration_run(started_request(db, ("ChannelT0",), site="lab")["ChannelT0"])
        db.cancel_request(again.request_id, "/CN=Ada")
        with pytest.raises(StateConflict):
            request_run.begin(db, again.request_id, "flow-run-2")  # nothing is prepared for it
