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
