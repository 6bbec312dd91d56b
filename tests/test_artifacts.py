"""What the validation report shows, without Prefect: constants to significant figures with
their units, plots inside the report (and beside ``validation.md``)."""

from __future__ import annotations

import base64
import json
import re
import struct
from pathlib import Path

import pytest

from b2cal.cdb.embedded import EmbeddedStore
from b2cal.cdb.model import TagState
from b2cal.cdb.store import NewPayloadIoV
from b2cal.core.iov import IoV
from b2cal.processing import validation as validation_module
from b2cal.processing.validation import significant, validate_output

pytestmark = pytest.mark.unit
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
