"""Processing without Prefect: uploads gated by the action log, validation, dry runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from b2cal.cdb.embedded import EmbeddedStore
from b2cal.db.database import StateDatabase
from b2cal.db.states import CalRunState
from b2cal.processing.upload import upload_approved
from b2cal.processing.validation import validate_output
from b2cal.sites import BucketRule, RequestKind, Site

pytestmark = pytest.mark.unit

S = CalRunState


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return Site(
        name="lab",
        storage_roots=[tmp_path / "storage"],
        work_root=tmp_path / "work",
        buckets=BucketRule(runs=2),
    )


def test_an_approval_missing_from_the_action_log_uploads_nothing(
    tmp_path: Path, site: Site
) -> None:
    with (
        StateDatabase(f"sqlite:///{tmp_path / 'state.sqlite'}") as db,
        EmbeddedStore(f"sqlite:///{tmp_path / 'cdb.sqlite'}", tmp_path / "payloads") as store,
    ):
        request = db.create_request(
            kind=RequestKind.PROMPT,
            site="lab",
            exp=1,
            run_low=1,
            run_high=2,
            calibrations=["ChannelT0"],
        )
        (calrun,) = db.start_request(request.id)
        store.create_tag(request.staging_tag)
        for state in (S.VALIDATING, S.AWAITING_SIGNOFF, S.APPROVED):  # no sign-off recorded
            db.move(calrun.id, state)
        report = upload_approved(db, store, site, request.id)
        assert report.blocked == {"ChannelT0": "its approval is not in the action log"}
        assert db.calibration_run(calrun.id).state is S.APPROVED
        assert store.iovs(request.staging_tag) == []
        (refusal,) = [a for a in db.actions() if a.action == "upload"]
        assert refusal.outcome == "refused"


def test_validation_reports_pulls_and_refuses_non_finite_constants(tmp_path: Path) -> None:
    outputdb = tmp_path / "outputdb"
    outputdb.mkdir()
    doc = {"t0": [1.0, 2.0, float("nan")], "t0_err": [0.1, 0.1, 0.1]}
    (outputdb / "dbstore_T_rev_1.json").write_text(json.dumps(doc))
    (outputdb / "database.txt").write_text("dbstore/T 1 1,1,1,-1\n")
    result = validate_output("T", outputdb, tmp_path / "v", None, None)
    assert not result.passed
    assert result.problems == ["T t0 in 1,1,1,-1 holds non-finite values"]
    assert (tmp_path / "v" / "validation.md").read_text().startswith("# T: validation FAILED")
    empty = tmp_path / "empty"
    empty.mkdir()
    with EmbeddedStore(f"sqlite:///{tmp_path / 'cdb.sqlite'}", tmp_path / "payloads") as store:
        nothing = validate_output(
            "T", empty, tmp_path / "w", store, "nosuch", reference_required=True
        )
    assert nothing.problems == ["reference tag nosuch does not exist", f"no payloads in {empty}"]


def test_retention_removes_collector_outputs_of_old_finished_requests_only(
    tmp_path: Path, site: Site
) -> None:
    from datetime import timedelta

    from b2cal.processing.area import RequestArea
    from b2cal.processing.retention import clean_finished_requests

    with StateDatabase(f"sqlite:///{tmp_path / 'state.sqlite'}") as db:
        ids = []
        for _ in range(2):
            request = db.create_request(
                kind=RequestKind.PROMPT, site="lab", exp=1, run_low=1, run_high=2,
                calibrations=["ChannelT0"],
            )  # fmt: skip
            ids.append(request.id)
            jobs = RequestArea(site.request_folder(request.id)).output / "ChannelT0"
            for job in ("0000", "0001"):
                folder = jobs / "iterations" / "0" / "jobs" / job
                folder.mkdir(parents=True)
                (folder / "output.pkl").write_bytes(b"x" * 10)
                (folder / "status.json").write_text("{}")
            (jobs / "outputdb").mkdir()
            (jobs / "outputdb" / "database.txt").write_text("kept\n")
        done, running = ids
        (calrun,) = db.start_request(done)
        for state in (S.VALIDATING, S.APPROVED, S.UPLOADED):
            db.move(calrun.id, state)
        db.start_request(running)
        later = db.request(done).updated + timedelta(days=15)
        assert clean_finished_requests(db, site, later - timedelta(days=2)) == []  # too young
        (cleaned,) = clean_finished_requests(db, site, later)
        assert (cleaned.request_id, cleaned.files, cleaned.bytes) == (done, 2, 20)
        assert clean_finished_requests(db, site, later) == []  # once
        for request_id, outputs in ((done, 0), (running, 2)):
            area = RequestArea(site.request_folder(request_id))
            assert len(list(area.output.glob("*/iterations/*/jobs/*/output.pkl"))) == outputs
            assert len(list(area.output.glob("*/iterations/*/jobs/*/status.json"))) == 2
        assert (RequestArea(site.request_folder(done)).output / "ChannelT0" / "outputdb").is_dir()


def test_an_input_that_breaks_the_collector_is_marked_bad_only_if_it_cannot_be_read(
    tmp_path: Path, small_storage: Path
) -> None:
    import shutil

    from counting import BreaksOnRun2, counting

    from b2cal.backends.local import LocalBackend
    from b2cal.caf.plan import CalibrationRequest
    from b2cal.caf.steps import collect, plan
    from b2cal.caf.workspace import Workspace
    from b2cal.db import discovery
    from b2cal.db.states import FileStatus
    from b2cal.errors import CollectionFailed
    from b2cal.processing.jobs import mark_failed_inputs

    storage = tmp_path / "storage"  # a file of it is cut short below: not the shared one
    shutil.copytree(small_storage, storage)
    lab = Site(name="lab", storage_roots=[storage], work_root=tmp_path / "work",
               settle_seconds=0, buckets=BucketRule(runs=10))  # fmt: skip
    workspace = Workspace(tmp_path / "out")
    calibration = counting(max_files_per_job=1).model_copy(update={"collector": BreaksOnRun2()})
    request = CalibrationRequest(exp=1, first_run=1, last_run=4, storage=storage)
    plan(workspace, request, {"Counting": calibration})
    with LocalBackend(1, retries=1) as backend, pytest.raises(CollectionFailed) as failed:
        collect(workspace, calibration, 0, backend)
    assert "the collector failed on" in failed.value.reason
    assert "RuntimeError: unexpected value in hit_time" in failed.value.reason
    with StateDatabase(f"sqlite:///{tmp_path / 'state.sqlite'}") as db:
        discovery.discover(db, lab)
        # the files of run 2 read well alone: the collector's fault, not theirs
        assert mark_failed_inputs(db, "lab", workspace, "Counting", 0) == []
        assert discovery.files(db, "lab", FileStatus.BAD) == []
        assert "mark bad" not in [a.action for a in db.actions()]
        # one of them that cannot be read alone (cut short on disk) is the file's own fault
        run2 = sorted(p for p in storage.rglob("*.r00002.*.root") if "/bhabha/" in str(p))
        broken = run2[0]
        broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])
        assert mark_failed_inputs(db, "lab", workspace, "Counting", 0) == [str(broken)]
        (bad,) = discovery.files(db, "lab", FileStatus.BAD)
        assert bad.path == str(broken) and bad.reason.endswith("(it broke the Counting collector)")
        assert mark_failed_inputs(db, "lab", workspace, "Counting", 0) == []  # once
        assert [a.action for a in db.actions()].count("mark bad") == 1
