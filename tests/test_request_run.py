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


def test_a_skip_is_refused_when_no_input_tag_stands_in_for_its_dependants(
    tmp_path: Path,
) -> None:
    from b2cal.cdb.model import TagState
    from b2cal.cdb.store import NewPayloadIoV
    from b2cal.core.iov import IoV
    from b2cal.processing.preparation import standing_in

    with (
        StateDatabase(f"sqlite:///{tmp_path / 'state.sqlite'}") as db,
        EmbeddedStore(f"sqlite:///{tmp_path / 'cdb.sqlite'}", tmp_path / "payloads") as store,
    ):
        for tag in ("other-runs", "t0-known"):
            store.create_tag(tag)
        store.write_iovs("other-runs", [NewPayloadIoV("ChannelT0", b"{}", IoV(3, 20, 3, 30), {})],
                         state=TagState.OPEN)  # fmt: skip
        store.write_iovs("t0-known", [NewPayloadIoV("ChannelT0", b"{}", IoV(3, 1, 3, 4), {})],
                         state=TagState.OPEN)  # fmt: skip

        def request(*tags: str, calibrations: tuple[str, ...] = ("ChannelGain",)) -> object:
            return db.create_request(
                kind=RequestKind.PROMPT, site="lab", exp=3, run_low=1, run_high=8,
                calibrations=calibrations, input_tags=list(tags),
            )  # fmt: skip

        with pytest.raises(B2CalError) as refused:
            standing_in(store, request(), "ChannelT0")  # type: ignore[arg-type]
        assert str(refused.value).startswith(
            "ChannelT0 cannot be skipped: ChannelGain read its payloads, and no input tag of "
        )
        assert "(input tags: none) holds a ChannelT0 payload for runs 1-8" in str(refused.value)
        with pytest.raises(B2CalError, match="input tags: other-runs"):  # not for these runs
            standing_in(store, request("other-runs"), "ChannelT0")  # type: ignore[arg-type]
        held = standing_in(store, request("other-runs", "t0-known"), "ChannelT0")  # type: ignore[arg-type]
        assert held == ["t0-known"]
        # nothing depends on it: nothing to stand in for
        assert standing_in(store, request(calibrations=("ChannelT0",)), "ChannelT0") == []  # type: ignore[arg-type]


def test_a_replaced_input_fails_the_plan_saying_how_to_take_it_and_a_rerun_takes_it(
    tmp_path: Path, small_storage: Path
) -> None:
    import shutil

    from b2cal.db import discovery

    storage = tmp_path / "storage"
    shutil.copytree(small_storage, storage)
    site = Site(name="lab", storage_roots=[storage], work_root=tmp_path / "work",
                settle_seconds=0)  # fmt: skip
    with (
        StateDatabase(f"sqlite:///{tmp_path / 'state.sqlite'}") as db,
        EmbeddedStore(f"sqlite:///{tmp_path / 'cdb.sqlite'}", tmp_path / "payloads") as store,
    ):
        discovery.discover(db, site)
        made = db.create_request(
            kind=RequestKind.PROMPT, site="lab", exp=1, run_low=1, run_high=4,
            calibrations=["ChannelT0"], input_tags=[],
        )  # fmt: skip
        request_run.begin(db, made.id, "flow-run-1")
        assert request_run.plan(db, store, site, made.id).here == ["ChannelT0"]
        replaced = next(storage.rglob("*.r00002.f00000.root"))
        copy = replaced.read_bytes()
        replaced.unlink()
        replaced.write_bytes(copy)  # transferred again
        calrun = db.calibration_run_of(made.id, "ChannelT0")
        with pytest.raises(B2CalError, match=f"b2cal request rerun {calrun.id} accepts"):
            request_run.plan(db, store, site, made.id)  # a retried flow run
        failed = db.calibration_run(calrun.id)
        assert failed.state is CalRunState.FAILED and "replaced since" in (failed.message or "")
        assert db.request(made.id).state is RequestState.FAILED
        db.rerun([calrun.id], "/CN=Ada")
        assert request_run.plan(db, store, site, made.id).here == ["ChannelT0"]  # taken
