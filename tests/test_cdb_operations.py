"""Upload, promotion, diff, basf2 export/import — on every store (SQL servers and nopayloaddb)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from b2cal.caf.outputs import write_final_output
from b2cal.caf.workspace import Workspace
from b2cal.cdb.model import TagState
from b2cal.cdb.operations import (
    diff_tags,
    export_local_database,
    import_local_database,
    promote,
    upload,
)
from b2cal.cdb.store import ConditionsStore
from b2cal.core.iov import ExpRun, IoV
from b2cal.core.localdb import LocalDatabase, read_database_txt
from b2cal.errors import B2CalError, CdbError, ChecksumMismatch, ForbiddenChange, UnknownTag


def calibration_output(
    base: Path, name: str, iovs: list[IoV], value: float = 1.0, run_id: str = "run1"
) -> Path:
    """An output folder as `b2cal caf run` writes it: outputdb/ plus provenance sidecars."""
    area = Workspace(base).calibration(name)
    payloads = [(name, iov, {"value": value + i}) for i, iov in enumerate(iovs)]
    write_final_output(
        area, payloads, calibration_run=run_id, iteration=0, digest="abc", upstream=[]
    )
    return area.outputdb


def table(store: ConditionsStore, tag: str) -> list[tuple[str, str, float]]:
    """A tag's IoVs as (name, IoV, constant) for comparisons."""
    return [
        (e.name, str(e.iov), json.loads(store.payload_data(e.payload))["value"])
        for e in store.iovs(tag)
    ]


def staged(store: ConditionsStore, tmp_path: Path, tag: str, iovs: list[IoV], value: float) -> None:
    store.create_tag(tag)
    upload(store, calibration_output(tmp_path / tag, "T0", iovs, value), tag)


def test_upload_is_idempotent_and_keeps_provenance(store: ConditionsStore, tmp_path: Path) -> None:
    outputdb = calibration_output(tmp_path, "T0", [IoV(1, 1, 1, 4), IoV(1, 5, 1, 9)])
    store.create_tag("staging")
    first = upload(store, outputdb, "staging")
    assert len(first.add) == 2
    again = upload(store, outputdb, "staging")
    assert again.empty
    assert table(store, "staging") == [("T0", "1,1,1,4", 1.0), ("T0", "1,5,1,9", 2.0)]
    assert [p.revision for p in store.find_payloads("T0")] == [1, 2]
    found = store.find_payloads(calibration_run="run1")
    assert len(found) == 2 and all(p.provenance["calibration"] == "T0" for p in found)
    assert store.find_payloads(calibration_run="other") == []


def test_same_constants_in_another_tag_are_the_same_payload(
    store: ConditionsStore, tmp_path: Path
) -> None:
    outputdb = calibration_output(tmp_path, "T0", [IoV(1, 1, 1, 4)])
    for tag in ("a", "b"):
        store.create_tag(tag)
        upload(store, outputdb, tag)
    assert [p.revision for p in store.find_payloads("T0")] == [1]


def test_upload_refuses_a_changed_payload_file(store: ConditionsStore, tmp_path: Path) -> None:
    outputdb = calibration_output(tmp_path, "T0", [IoV(1, 1, 1, 4), IoV(1, 5, 1, 9)])
    (outputdb / "dbstore_T0_rev_2.json").write_text('{"value": 99}\n')
    store.create_tag("staging")
    with pytest.raises(ChecksumMismatch, match="T0"):
        upload(store, outputdb, "staging")
    assert store.iovs("staging") == []  # nothing of the first payload either


def test_upload_refuses_missing_files_unknown_tags_and_frozen_tags(
    store: ConditionsStore, tmp_path: Path
) -> None:
    outputdb = calibration_output(tmp_path, "T0", [IoV(1, 1, 1, 4)])
    with pytest.raises(UnknownTag, match="nope"):
        upload(store, outputdb, "nope")
    store.create_tag("staging")
    store.set_state("staging", TagState.TESTING)
    with pytest.raises(ForbiddenChange, match="TESTING"):
        upload(store, outputdb, "staging")
    (outputdb / "dbstore_T0_rev_1.json").unlink()
    with pytest.raises(B2CalError, match="payload file missing"):
        upload(store, outputdb, "staging")
    with pytest.raises(CdbError, match="not a local database"):
        upload(store, tmp_path, "staging")


def test_upload_refuses_overlap_with_what_the_tag_holds(
    store: ConditionsStore, tmp_path: Path
) -> None:
    staged(store, tmp_path, "staging", [IoV(1, 1, 1, 9)], 1.0)
    other = calibration_output(tmp_path / "x", "T0", [IoV(1, 5, 1, 20)], value=7.0)
    with pytest.raises(ForbiddenChange, match="overlaps"):
        upload(store, other, "staging")
    assert table(store, "staging") == [("T0", "1,1,1,9", 1.0)]


def running_tag(store: ConditionsStore, tmp_path: Path) -> None:
    staged(store, tmp_path, "running", [IoV(1, 0, 1, 9), IoV(1, 10, -1, -1)], 1.0)
    store.set_state("running", TagState.RUNNING)


def validated(store: ConditionsStore, tmp_path: Path, iovs: list[IoV], value: float) -> None:
    staged(store, tmp_path, "staging", iovs, value)
    store.set_state("staging", TagState.TESTING)
    store.set_state("staging", TagState.VALIDATED)


def test_promotion_closes_the_open_ended_iov_and_appends(
    store: ConditionsStore, tmp_path: Path
) -> None:
    running_tag(store, tmp_path)
    validated(store, tmp_path, [IoV(1, 20, 1, 29), IoV(1, 30, -1, -1)], 5.0)
    change = promote(store, "staging", "running", ExpRun(1, 20))
    assert len(change.close) == 1 and len(change.add) == 2
    assert table(store, "running") == [
        ("T0", "1,0,1,9", 1.0),
        ("T0", "1,10,1,19", 2.0),
        ("T0", "1,20,1,29", 5.0),
        ("T0", "1,30,-1,-1", 6.0),
    ]
    assert promote(store, "staging", "running", ExpRun(1, 20)).empty  # a retry changes nothing
    assert store.lookup(["running"], "T0", ExpRun(1, 25)).iov == IoV(1, 20, 1, 29)


def test_promotion_from_inside_the_staging_range_clips_its_first_iov(
    store: ConditionsStore, tmp_path: Path
) -> None:
    running_tag(store, tmp_path)
    validated(store, tmp_path, [IoV(1, 12, 1, 29), IoV(1, 30, -1, -1)], 5.0)
    promote(store, "staging", "running", ExpRun(1, 15))
    assert [iov for _, iov, _ in table(store, "running")][1:] == [
        "1,10,1,14",
        "1,15,1,29",
        "1,30,-1,-1",
    ]


def test_promotion_refusals_leave_the_running_tag_untouched(
    store: ConditionsStore, tmp_path: Path
) -> None:
    running_tag(store, tmp_path)
    before = table(store, "running")
    staged(store, tmp_path, "open", [IoV(1, 20, -1, -1)], 5.0)
    with pytest.raises(ForbiddenChange, match="only a VALIDATED tag"):
        promote(store, "open", "running", ExpRun(1, 20))
    validated(store, tmp_path, [IoV(1, 20, 1, 24), IoV(1, 26, -1, -1)], 5.0)
    with pytest.raises(CdbError, match="gap between IoVs 1,20,1,24 and 1,26,-1,-1"):
        promote(store, "staging", "running", ExpRun(1, 20))
    with pytest.raises(ForbiddenChange, match="promotion goes into a RUNNING tag"):
        promote(store, "staging", "open", ExpRun(1, 20))
    assert table(store, "running") == before


def test_promotion_of_several_payload_names(store: ConditionsStore, tmp_path: Path) -> None:
    running_tag(store, tmp_path)
    store.create_tag("staging")
    upload(store, calibration_output(tmp_path / "a", "T0", [IoV(1, 20, -1, -1)], 5.0), "staging")
    upload(store, calibration_output(tmp_path / "b", "T1", [IoV(1, 20, 1, 29)], 5.0), "staging")
    store.set_state("staging", TagState.TESTING)
    store.set_state("staging", TagState.VALIDATED)
    promote(store, "staging", "running", ExpRun(1, 20))  # two names: no overlap between them
    assert {e.name for e in store.iovs("running")} == {"T0", "T1"}


def test_promotion_that_would_uncover_later_runs_is_refused(
    store: ConditionsStore, tmp_path: Path
) -> None:
    running_tag(store, tmp_path)
    before = table(store, "running")
    validated(store, tmp_path, [IoV(1, 20, 1, 29)], 5.0)
    with pytest.raises(ForbiddenChange, match="would leave T0 without payload after 1,20,1,29"):
        promote(store, "staging", "running", ExpRun(1, 20))
    assert table(store, "running") == before


def test_upload_and_import_go_into_open_tags_only(store: ConditionsStore, tmp_path: Path) -> None:
    running_tag(store, tmp_path)
    outputdb = calibration_output(tmp_path / "late", "T0", [IoV(1, 30, -1, -1)])
    with pytest.raises(ForbiddenChange, match="changes only by promotion"):
        upload(store, outputdb, "running")
    with pytest.raises(ForbiddenChange, match="changes only by promotion"):
        import_local_database(store, outputdb, "running")


def test_lookup_chain_checks_every_tag_and_skips_no_invalid_one(
    store: ConditionsStore, tmp_path: Path
) -> None:
    staged(store, tmp_path, "a", [IoV(1, 1, 1, 9)], 1.0)
    with pytest.raises(UnknownTag, match="nosuch"):
        store.lookup(["a", "nosuch"], "T0", ExpRun(1, 2))
    store.set_state("a", TagState.RUNNING)
    store.set_state("a", TagState.INVALID)
    with pytest.raises(CdbError, match="INVALID"):
        store.lookup(["a"], "T0", ExpRun(1, 2))


def test_promotion_into_the_past_is_refused(store: ConditionsStore, tmp_path: Path) -> None:
    running_tag(store, tmp_path)
    validated(store, tmp_path, [IoV(1, 5, -1, -1)], 5.0)
    with pytest.raises(ForbiddenChange, match="append-only"):
        promote(store, "staging", "running", ExpRun(1, 5))


def test_diff(store: ConditionsStore, tmp_path: Path) -> None:
    staged(store, tmp_path, "a", [IoV(1, 1, 1, 4), IoV(1, 5, 1, 9)], 1.0)
    store.clone_tag("a", "b")
    assert diff_tags(store, "a", "b") == []
    upload(store, calibration_output(tmp_path / "c", "T1", [IoV(1, 1, 1, 9)], 3.0), "b")
    rows = diff_tags(store, "a", "b")
    assert [(r.name, str(r.iov), r.kind) for r in rows] == [("T1", "1,1,1,9", "only in B")]


def test_basf2_export_import_round_trip(store: ConditionsStore, tmp_path: Path) -> None:
    iovs = [IoV(1, 1, 1, 4), IoV(1, 5, 1, 9), IoV(1, 10, -1, -1)]
    staged(store, tmp_path, "a", iovs, 1.0)
    upload(store, calibration_output(tmp_path / "x", "T1", [IoV(1, 1, 1, -1)], 4.0), "a")
    assert export_local_database(store, "a", tmp_path / "export") == 4
    exported = LocalDatabase(tmp_path / "export")
    assert exported.payload("T0", ExpRun(1, 7)) == {"value": 2.0}
    import_local_database(store, tmp_path / "export", "b")
    key = [(e.name, str(e.iov), e.payload.checksum) for e in store.iovs("a")]
    assert key == [(e.name, str(e.iov), e.payload.checksum) for e in store.iovs("b")]
    lines = [e.line() for e in read_database_txt(tmp_path / "export")]
    assert len(lines) == 4
    with pytest.raises(CdbError, match="already holds"):
        export_local_database(store, "a", tmp_path / "export")
