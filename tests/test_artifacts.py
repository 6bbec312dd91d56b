"""What the Prefect artifacts of a request say, without Prefect: constants to significant
figures with their units, keys Prefect accepts, plots inside the validation report (and
beside ``validation.md``), and the request's summary. tests/test_prefect_ui_artifacts.py
looks at them in the real Prefect UI."""

from __future__ import annotations

import base64
import json
import re
import struct
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from calibration_runs import PASSED, started_request

from b2cal.cdb.embedded import EmbeddedStore
from b2cal.cdb.model import TagState
from b2cal.cdb.store import NewPayloadIoV
from b2cal.core.iov import IoV
from b2cal.db.database import StateDatabase
from b2cal.db.model import Bucket
from b2cal.db.states import BucketState, CalRunState
from b2cal.orchestrator import artifacts
from b2cal.orchestrator.labels import artifact_key, request_heading
from b2cal.processing import validation as validation_module
from b2cal.processing.validation import significant, validate_output

pytestmark = pytest.mark.unit
S = CalRunState
DATA_PNG = re.compile(r"!\[[^]]*\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)")


def test_constants_are_shown_to_significant_figures() -> None:
    assert significant(0.6748200235114314) == "0.6748"
    assert significant(-19.6) == "-19.60"  # its four figures, trailing zero kept
    assert significant(1234.0) == "1234"  # no trailing point
    assert significant(12345.678) == "1.235e4"
    assert significant(-0.000372) == "-0.0003720"
    assert significant(3.1e-7) == "3.100e-7"
    assert significant(0.0123, sign=True) == "+0.01230"
    assert significant(-2.5, sign=True) == "-2.500"
    assert significant(295.4, 3) == "295"
    assert significant(None) == ""
    assert significant(float("nan")) == "nan"


def test_artifact_keys_are_slugs_prefect_accepts() -> None:
    from prefect.types.names import raise_on_name_alphanumeric_dashes_only

    assert (
        artifact_key("request", 17, "ChannelT0", "validation") == "request-17-channelt0-validation"
    )
    assert artifact_key("Request", 3, "My_Cal.v2 (test)", "") == "request-3-my-cal-v2-test"
    for key in ("request-17-channelt0-validation", artifact_key("a", "B__C", "--d--")):
        assert raise_on_name_alphanumeric_dashes_only(key, "Artifact key") == key
    with pytest.raises(ValueError):
        raise_on_name_alphanumeric_dashes_only("validation-17-ChannelT0", "Artifact key")
    with pytest.raises(ValueError, match="no artifact key"):
        artifact_key("", "—")


def _payload(folder: Path, name: str, revision: int, iov: str, doc: dict[str, object]) -> None:
    (folder / f"dbstore_{name}_rev_{revision}.json").write_text(json.dumps(doc))
    with (folder / "database.txt").open("a") as listing:
        listing.write(f"dbstore/{name} {revision} {iov}\n")


@pytest.fixture
def validated(tmp_path: Path) -> validation_module.Validation:
    """A calibration "T" with a vector payload (two IoVs, errors) and a payload of scalars
    (a beam spot), validated against a reference tag that has the vector one."""
    outputdb = tmp_path / "outputdb"
    outputdb.mkdir()
    _payload(outputdb, "T", 1, "1,1,1,4", {"t0": [1.0, 2.0, 3.0], "t0_err": [0.1, 0.1, 0.1]})
    _payload(outputdb, "T", 2, "1,5,1,8", {"t0": [1.5, 2.0, 2.0], "t0_err": [0.1, 0.1, 0.1]})
    _payload(outputdb, "Spot", 1, "1,1,1,4", {"x": 0.01234567, "x_err": 0.0001, "z": -0.25})
    _payload(outputdb, "Spot", 2, "1,5,1,8", {"x": 0.0125, "x_err": 0.0001, "z": -0.2})
    with EmbeddedStore(f"sqlite:///{tmp_path / 'cdb.sqlite'}", tmp_path / "payloads") as store:
        store.create_tag("running")
        reference = {"t0": [1.0, 2.0, 2.0], "t0_err": [0.1, 0.1, 0.1]}
        store.write_iovs(
            "running",
            [NewPayloadIoV("T", json.dumps(reference).encode(), IoV(1, 0, -1, -1))],
            state=TagState.OPEN,
        )
        return validate_output(
            "T", outputdb, tmp_path / "validation", store, "running",
            units={"t0": "ns", "Spot.x": "cm"},
        )  # fmt: skip


def test_the_constants_table_is_narrow_text_with_units(
    validated: validation_module.Validation,
) -> None:
    rows = validated.table()
    # the calibration's own payload without its name; a unit where one is declared
    assert sorted(r["field"] for r in rows) == [
        "Spot.x [cm]", "Spot.x [cm]", "Spot.z", "Spot.z", "t0 [ns]", "t0 [ns]",
    ]  # fmt: skip
    t0 = next(r for r in rows if r["IoV"] == "1,1,1,4" and r["field"] == "t0 [ns]")
    assert t0 == {
        "IoV": "1,1,1,4", "field": "t0 [ns]", "n": "3", "mean": "2.000", "min": "1.000",
        "max": "3.000", "change": "+0.3333", "max |pull|": "7.07", "flagged": "1",
    }  # fmt: skip
    spot = next(r for r in rows if r["IoV"] == "1,1,1,4" and r["field"] == "Spot.x [cm]")
    assert (spot["mean"], spot["min"], spot["max"], spot["change"]) == ("0.01235", "", "", "")
    for row in rows:  # every value is short text: no raw float makes a column wide
        assert all(isinstance(v, str) and len(v) <= 12 for v in row.values()), row


def _cells(line: str) -> list[str]:
    """The cells of a Markdown table row (``\\|`` is a pipe inside a cell)."""
    return re.split(r"(?<!\\)\|", line.strip())[1:-1]


def test_the_report_embeds_small_plots_and_validation_md_links_them_beside_it(
    validated: validation_module.Validation, tmp_path: Path
) -> None:
    names = sorted(Path(p).name for p in validated.plots)
    assert names == ["Spot_per_iov.png", "T_t0.png", "pulls.png"]  # the scalars: per IoV
    embedded = validated.markdown("Request 1 · T: validation passed", embed=True)
    assert embedded.startswith("# Request 1 · T: validation passed\n")
    assert "file://" not in embedded
    images = DATA_PNG.findall(embedded)
    assert len(images) == 3
    for image in images:
        png = base64.b64decode(image)
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", png[16:24])
        assert 300 <= width <= 600 and height <= 600, (width, height)
    assert len(embedded) < 300_000
    # the table's rows all have the header's width (else no table is shown)
    table = [line for line in embedded.splitlines() if line.startswith("|")]
    assert {len(_cells(line)) for line in table} == {9}
    assert "max \\|pull\\|" in table[0]
    on_disk = (tmp_path / "validation" / "validation.md").read_text()
    assert "data:" not in on_disk and "file://" not in on_disk
    linked = re.findall(r"!\[[^]]*\]\(([^)]+)\)", on_disk)
    assert sorted(linked) == names
    assert all((tmp_path / "validation" / name).is_file() for name in linked)


def test_plots_beyond_the_size_limit_are_named_not_embedded(
    validated: validation_module.Validation, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = Path(validated.plots[0])
    monkeypatch.setattr(validation_module, "EMBED_LIMIT", len(validation_module.data_uri(first)))
    embedded = validated.markdown(embed=True)
    assert len(DATA_PNG.findall(embedded)) == 1
    for later in validated.plots[1:]:
        assert f"plot {Path(later).name} not embedded (too large, or gone): {later}" in embedded


def _bucket() -> Bucket:
    moment = datetime(2026, 1, 2, tzinfo=UTC)
    return Bucket(1, "lab", 1, 3, 1, 8, BucketState.PROCESSING, moment, moment, 0, 8)


def test_validation_artifacts_name_request_bucket_calibration_and_iteration(
    tmp_path: Path, validated: validation_module.Validation
) -> None:
    with StateDatabase(f"sqlite:///{tmp_path / 'state.sqlite'}") as db:
        ids = started_request(db, ("ChannelT0",), through=(S.COLLECTING,), runs=(1, 8))
        db.move(ids["ChannelT0"], S.ALGORITHM, iteration=2)
        calrun = db.calibration_run(ids["ChannelT0"])
        request = db.request(calrun.request_id)
        renamed = validated.model_copy(update={"calibration": "ChannelT0"})
        report, table = artifacts.validation_artifacts(request, _bucket(), calrun, renamed)
        assert report.key == f"request-{request.id}-channelt0-validation"
        assert table.key == f"request-{request.id}-channelt0-constants"
        title = f"Request {request.id} · e1 bucket 3 · ChannelT0 · iteration 2"
        assert report.description == f"{title}: validation passed"
        assert report.markdown.startswith(f"# {title}: validation passed\n")
        assert table.description == f"{title}: constants per IoV (passed)"
        assert table.rows == renamed.table()
        assert DATA_PNG.search(report.markdown)  # its plots inside
        # without a bucket its runs; a rerun says its attempt
        again = replace(calrun, attempt=2)
        report, _ = artifacts.validation_artifacts(request, None, again, validated)
        assert report.description.startswith(
            f"Request {request.id} · e1 r1-8 · ChannelT0 · iteration 2 · attempt 2: "
        )
        # as the flow makes them: from the state database
        made, _ = artifacts.validation_artifacts_of(db, request.id, "ChannelT0", validated)
        assert (
            made.description
            == f"Request {request.id} · e1 r1-8 · ChannelT0 · iteration 2: validation passed"
        )


def test_the_request_summary_says_what_ran_passed_and_went_where(tmp_path: Path) -> None:
    with (
        StateDatabase(f"sqlite:///{tmp_path / 'state.sqlite'}") as db,
        EmbeddedStore(f"sqlite:///{tmp_path / 'cdb.sqlite'}", tmp_path / "payloads") as store,
    ):
        ids = started_request(db, ("ChannelT0", "ChannelGain"), runs=(1, 8))
        request = db.request(db.calibration_run(ids["ChannelT0"]).request_id)
        t0, gain = ids["ChannelT0"], ids["ChannelGain"]
        db.move(t0, S.ALGORITHM, iteration=1)
        db.move(t0, S.VALIDATING)
        db.move(t0, S.AWAITING_SIGNOFF, summary=PASSED)
        for state in (S.APPROVED, S.UPLOADED):
            db.move(t0, state)
        db.move(gain, S.COLLECTING, iteration=0)
        db.move(gain, S.FAILED, message="collector jobs failed: 2 of 4")
        absent = artifacts.request_summary_of(db, store, request.id)
        assert f"Staging tag {request.staging_tag}: not created." in absent.markdown
        store.create_tag(request.staging_tag)
        made_by = {"calibration": "ChannelT0"}  # the provenance an upload gives them
        store.write_iovs(
            request.staging_tag,
            [
                NewPayloadIoV("ChannelT0", b'{"t0": [1]}', IoV(1, 1, 1, 4), made_by),
                NewPayloadIoV("ChannelT0", b'{"t0": [2]}', IoV(1, 5, 1, 8), made_by),
            ],
            state=TagState.OPEN,
        )
        db.finish_request(request.id, "ChannelGain: collector jobs failed")
        request = db.request(request.id)
        made = artifacts.request_summary_of(db, store, request.id)
    assert made.key == f"request-{request.id}-summary"
    heading = f"Request {request.id} · e1 r1-8"
    assert made.description == (
        f"{heading}: {request.state.value}, 1 of 2 calibrations uploaded to {request.staging_tag}"
    )
    lines = made.markdown.splitlines()
    assert lines[0] == f"# {heading}: {request.state.value}"
    assert lines[2] == (
        "Prompt request of experiment 1, runs 1-8, at site local. "
        "Reference tag: the site running tag. Input tags: base."
    )
    table = [_cells(line) for line in lines if line.startswith("|")]
    assert [c.strip() for c in table[0]] == [
        "calibration", "state", "iterations", "validation", "payloads", "IoVs",
    ]  # fmt: skip
    rows = {cells[0].strip(): [c.strip() for c in cells] for cells in table[2:]}
    assert rows["ChannelT0"] == ["ChannelT0", "UPLOADED", "2", "passed", "2", "2"]
    assert rows["ChannelGain"] == ["ChannelGain", "FAILED", "1", "", "0", "0"]
    assert "Passed validation: ChannelT0." in lines
    assert (
        f"Payloads went to the staging tag **{request.staging_tag}** (OPEN): 2 payloads, 2 IoVs."
        in lines
    )
    assert "- ChannelGain: collector jobs failed: 2 of 4" in lines


def test_the_summary_names_the_bucket_and_the_sites_of_placed_calibrations(
    tmp_path: Path,
) -> None:
    with StateDatabase(f"sqlite:///{tmp_path / 'state.sqlite'}") as db:
        ids = started_request(db, ("ChannelT0",), through=(S.COLLECTING,), summary=None)
        request = db.request(db.calibration_run(ids["ChannelT0"]).request_id)
        calruns = db.calibration_runs(request.id)
    placed = replace(request, placement={"ChannelT0": "desy"})
    staging = artifacts.Staging(request.staging_tag, TagState.OPEN)
    moment = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
    made = artifacts.request_summary(placed, _bucket(), calruns, staging, moment)
    assert made.markdown.startswith(f"# {request_heading(request, _bucket())}: RUNNING\n")
    assert request_heading(request, _bucket()) == f"Request {request.id} · e1 bucket 3"
    assert "| calibration | site | state |" in made.markdown
    assert "| ChannelT0 | desy | COLLECTING |" in made.markdown
    assert "0 payloads, 0 IoVs" in made.markdown
    assert made.markdown.rstrip().endswith(
        "As of 2026-03-04 05:06:07 UTC, the end of its process-request run."
    )


def test_a_scalar_fields_reference_of_another_shape_is_not_drawn(tmp_path: Path) -> None:
    """The per-IoV plot of a payload of scalars takes a reference only where it has the
    field's shape (an empty or longer reference array drew its first element, or failed)."""
    import numpy as np

    curves = {
        ("BeamSpot", "x"): [
            ("1,1,1,4", np.array([0.1]), np.array([0.01]), np.array([])),
            ("1,5,1,8", np.array([0.2]), None, np.array([1.0, 2.0])),
            ("1,9,1,-1", np.array([0.3]), None, np.array([0.25])),
        ]
    }
    written = validation_module._plots(tmp_path, curves, {}, [])
    assert [p.name for p in written] == ["BeamSpot_per_iov.png"]
    assert written[0].stat().st_size > 0
