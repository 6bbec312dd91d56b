"""`b2cal cdb` as the calibration coordinator uses it, on the embedded store (SQLite).

From a real calibration output to a RUNNING tag: upload, state changes, promotion, lookup,
export/import, diff, provenance query — and the one-line refusals on the way.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from cli import assert_one_line_error, b2cal_inline

from b2cal.toy.generate import generate_toy

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `b2cal caf run` output of ChannelT0 over runs 1-3 (run 2 with low statistics)."""
    base = tmp_path_factory.mktemp("calibrated")
    generate_toy(base / "s", 1, [1, 2, 3], events=1500, low_stat={2: 30}, seed=4)
    result = b2cal_inline(
        "caf", "run", "--storage", base / "s", "--exp", "1", "--runs", "1-3",
        "--calibrations", "ChannelT0", "--output", base / "o", "--open-ended",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return base / "o"


def cdb(tmp_path: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    url = f"sqlite:///{tmp_path / 'cdb.sqlite'}"
    return b2cal_inline("cdb", "--db", url, *args, env={"B2CAL_HOME": str(tmp_path / "home")})


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_from_calibration_output_to_running_tag(calibrated: Path, tmp_path: Path) -> None:
    outputdb = calibrated / "ChannelT0/outputdb"
    ok(cdb(tmp_path, "create", "staging", "--description", "prompt bucket 1"))
    assert "2 IoV(s) added" in ok(cdb(tmp_path, "upload", outputdb, "--tag", "staging"))
    assert "nothing to do" in ok(cdb(tmp_path, "upload", outputdb, "--tag", "staging"))
    shown = json.loads(ok(cdb(tmp_path, "show", "staging", "--json")))
    assert shown["state"] == "OPEN"
    assert [i["iov"] for i in shown["iovs"]] == ["1,1,1,1", "1,2,-1,-1"]
    printed = ok(
        cdb(tmp_path, "get", "--tag", "staging", "--name", "ChannelT0", "--exp", "1", "--run", "3")
    )
    assert printed == (outputdb / "dbstore_ChannelT0_rev_2.json").read_text()  # unchanged bytes

    for state in ("TESTING", "VALIDATED"):
        ok(cdb(tmp_path, "state", "staging", state))
    ok(cdb(tmp_path, "create", "running"))
    ok(cdb(tmp_path, "state", "running", "RUNNING"))
    assert "2 IoV(s) added" in ok(
        cdb(tmp_path, "promote", "staging", "running", "--from", "1", "1")
    )
    tags = {t["name"]: t["state"] for t in json.loads(ok(cdb(tmp_path, "tags", "--json")))}
    assert tags == {"running": "RUNNING", "staging": "VALIDATED"}

    run_id = json.loads((calibrated / "b2cal-run.json").read_text())["calibration_run"]
    found = json.loads(
        ok(cdb(tmp_path, "payloads", "--where", f"calibration_run={run_id}", "--json"))
    )
    assert [p["revision"] for p in found] == [1, 2]
    assert all(p["provenance"]["calibration"] == "ChannelT0" for p in found)


def test_export_import_and_diff(calibrated: Path, tmp_path: Path) -> None:
    ok(cdb(tmp_path, "import", calibrated / "ChannelT0/outputdb", "--tag", "a"))
    ok(cdb(tmp_path, "export", "a", tmp_path / "exported"))
    assert (tmp_path / "exported/database.txt").read_text().splitlines() == [
        "dbstore/ChannelT0 1 1,1,1,1",
        "dbstore/ChannelT0 2 1,2,-1,-1",
    ]
    ok(cdb(tmp_path, "import", tmp_path / "exported", "--tag", "b"))
    assert "same payloads" in ok(cdb(tmp_path, "diff", "a", "b"))
    ok(cdb(tmp_path, "clone", "a", "c"))
    assert json.loads(ok(cdb(tmp_path, "diff", "a", "c", "--json"))) == []


def test_refusals_are_one_line(calibrated: Path, tmp_path: Path) -> None:
    outputdb = calibrated / "ChannelT0/outputdb"
    ok(cdb(tmp_path, "create", "t"))
    assert_one_line_error(cdb(tmp_path, "create", "t"), "t")
    assert_one_line_error(cdb(tmp_path, "create", "prompt bucket"), "name 'prompt bucket'")
    assert_one_line_error(cdb(tmp_path, "clone", "t", "t/copy"), "name 't/copy'")
    assert_one_line_error(cdb(tmp_path, "state", "t", "PUBLISHED"), "cannot become PUBLISHED")
    assert_one_line_error(cdb(tmp_path, "state", "t", "SHINY"), "unknown global tag state")
    assert_one_line_error(cdb(tmp_path, "show", "nope"), "unknown global tag 'nope'")
    assert_one_line_error(cdb(tmp_path, "upload", outputdb, "--tag", "nope"), "nope")
    ok(cdb(tmp_path, "state", "t", "TESTING"))
    assert_one_line_error(cdb(tmp_path, "upload", outputdb, "--tag", "t"), "TESTING")
    assert_one_line_error(
        cdb(tmp_path, "get", "--tag", "t", "--name", "ChannelT0", "--exp", "1", "--run", "1"),
        "no payload ChannelT0 valid at experiment 1 run 1",
    )
    assert_one_line_error(cdb(tmp_path, "promote", "t", "t", "--from", "1", "1"), "VALIDATED")
    assert_one_line_error(cdb(tmp_path, "payloads", "--where", "nokey"), "KEY=VALUE")


@pytest.mark.parametrize("default", [False, True], ids=["--db", "B2CAL_HOME"])
def test_a_missing_database_is_refused_and_not_created(tmp_path: Path, default: bool) -> None:
    """Only `create` and `import` make a database; the others need one (they read it, or write
    to a tag it must hold) and leave no empty file or folder behind."""
    home = tmp_path / "home"
    missing = home / "cdb.sqlite" if default else tmp_path / "missing/dir/x.sqlite"
    url = f"sqlite:///{missing}"
    options = () if default else ("--db", url)
    env = {"B2CAL_HOME": str(home)}
    for command in [
        ("tags",),
        ("show", "t"),
        ("get", "--tag", "t", "--name", "ChannelT0", "--exp", "1", "--run", "1"),
        ("diff", "a", "b"),
        ("export", "t", str(tmp_path / "exported")),
        ("payloads",),
        ("state", "t", "TESTING"),
        ("promote", "a", "b", "--from", "1", "1"),
    ]:
        result = b2cal_inline("cdb", *options, *command, env=env)
        assert_one_line_error(result, url, "nothing has been stored in it yet")
    assert list(tmp_path.iterdir()) == []
    ok(b2cal_inline("cdb", *options, "create", "t", env=env))
    assert missing.is_file()
    listed = json.loads(ok(b2cal_inline("cdb", *options, "tags", "--json", env=env)))
    assert [t["name"] for t in listed] == ["t"]


def test_payloads_are_found_by_a_calibration_run_id_that_reads_as_a_number(
    calibrated: Path, tmp_path: Path
) -> None:
    """Calibration run ids are hex strings: ``174383332323`` or ``12e4...`` read as numbers
    too, and must still find the payloads whose provenance names them."""
    import shutil

    copied = tmp_path / "ChannelT0"
    shutil.copytree(calibrated / "ChannelT0", copied)
    sidecars = sorted((copied / "provenance").glob("*.json"))
    assert sidecars
    for sidecar in sidecars:
        provenance = json.loads(sidecar.read_text())
        provenance["calibration_run"] = "174383332323"
        sidecar.write_text(json.dumps(provenance))
    ok(cdb(tmp_path, "create", "staging"))
    ok(cdb(tmp_path, "upload", copied / "outputdb", "--tag", "staging"))
    for where in ("calibration_run=174383332323", "calibration=ChannelT0"):
        found = json.loads(ok(cdb(tmp_path, "payloads", "--where", where, "--json")))
        assert [p["revision"] for p in found] == [1, 2], where
    nothing = json.loads(ok(cdb(tmp_path, "payloads", "--where", "calibration_run=1", "--json")))
    assert nothing == []
