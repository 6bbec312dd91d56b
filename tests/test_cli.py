"""The ``b2cal`` command: help, bad input (one-line errors, exit codes), the plugin mechanism."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli import assert_one_line_error, b2cal_inline

pytestmark = pytest.mark.unit


def caf_run(storage: Path, output: Path, runs: str, calibrations: str) -> tuple[str, ...]:
    """Arguments of ``b2cal caf run`` for experiment 1."""
    options = {"--storage": storage, "--exp": 1, "--output": output, "--runs": runs}
    return (
        "caf",
        "run",
        *(str(x) for kv in options.items() for x in kv),
        "--calibrations",
        calibrations,
    )


def test_help_lists_the_commands() -> None:
    result = b2cal_inline("--help")
    assert result.returncode == 0
    for command in ("toy", "caf", "calibrations"):
        assert command in result.stdout
    assert "generate" in b2cal_inline("toy", "--help").stdout
    assert "run" in b2cal_inline("caf", "--help").stdout


def test_calibrations_list_shows_the_reference_plugins() -> None:
    result = b2cal_inline("calibrations", "list")
    assert result.returncode == 0
    for name in ("ChannelT0", "ChannelGain", "ModuleAlignment", "BeamSpot"):
        assert name in result.stdout


def test_unknown_calibration(small_storage: Path, tmp_path: Path) -> None:
    result = b2cal_inline(*caf_run(small_storage, tmp_path / "o", "1-4", "Nope"))
    assert_one_line_error(result, "unknown calibration 'Nope'", "ChannelT0")


@pytest.mark.parametrize("runs", ["5-3", "abc", "1-", "-2"])
def test_invalid_run_range(small_storage: Path, tmp_path: Path, runs: str) -> None:
    result = b2cal_inline(*caf_run(small_storage, tmp_path / "o", runs, "ChannelT0"))
    assert_one_line_error(result, "run range")


def test_storage_without_matching_files(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = b2cal_inline(*caf_run(tmp_path / "empty", tmp_path / "o", "1-4", "ChannelT0"))
    assert_one_line_error(result, "no input files for ChannelT0", "runs 1-4")
    result = b2cal_inline(*caf_run(tmp_path / "missing", tmp_path / "o", "1-4", "ChannelT0"))
    assert_one_line_error(result, "does not exist")


def test_runs_outside_the_data(small_storage: Path, tmp_path: Path) -> None:
    result = b2cal_inline(*caf_run(small_storage, tmp_path / "o", "50-60", "ChannelT0"))
    assert_one_line_error(result, "no input files", "runs 50-60")


def test_dependency_cycle_is_named(small_storage: Path, tmp_path: Path) -> None:
    args = caf_run(small_storage, tmp_path / "o", "1-4", "CycleA")
    result = b2cal_inline(*args, plugins=True)
    assert_one_line_error(result, "dependency cycle: CycleA -> CycleB -> CycleA")


def test_plugins_from_another_package_are_listed() -> None:
    result = b2cal_inline("calibrations", "list", plugins=True)
    assert result.returncode == 0 and "SlowT0" in result.stdout


def test_existing_output_with_other_arguments_is_refused_and_kept(
    small_storage: Path, tmp_path: Path
) -> None:
    out = tmp_path / "o"
    first = b2cal_inline(*caf_run(small_storage, out, "1-2", "ChannelT0"))
    assert first.returncode == 0, first.stderr
    before = (out / "ChannelT0/outputdb/database.txt").read_text()
    result = b2cal_inline(*caf_run(small_storage, out, "1-4", "ChannelT0"))
    assert_one_line_error(result, "other arguments", "runs: '1-2' then, '1-4' now")
    assert (out / "ChannelT0/outputdb/database.txt").read_text() == before
    again = b2cal_inline(*caf_run(small_storage, out, "1-2", "ChannelT0"))
    assert again.returncode == 0 and "ChannelT0: done earlier: OK" in again.stderr


def test_dependencies_are_added_and_said(small_storage: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    result = b2cal_inline(*caf_run(small_storage, out, "1-4", "BeamSpot"))
    assert result.returncode == 0, result.stdout
    assert "adding dependencies: ModuleAlignment" in result.stdout
    assert (out / "ModuleAlignment/outputdb/database.txt").exists()
    assert (out / "BeamSpot/outputdb/database.txt").exists()


def test_not_enough_data_exits_2_and_the_table_says_which(tmp_path: Path) -> None:
    from b2cal.toy.generate import generate_toy

    generate_toy(tmp_path / "s", 1, [1, 2], files_per_run=1, events=30, seed=3)
    result = b2cal_inline(*caf_run(tmp_path / "s", tmp_path / "o", "1-2", "ChannelT0,BeamSpot"))
    assert result.returncode == 2, result.stderr
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if "│" in line}
    assert "NOT_ENOUGH_DATA" in rows["ChannelT0"]
    assert "NOT_ENOUGH_DATA" in rows["ModuleAlignment"]
    assert "not run: dependency ModuleAlignment ended NOT_ENOUGH_DATA" in rows["BeamSpot"]
    assert "Traceback" not in result.stderr


def test_corrupt_file_is_named_and_the_calibration_goes_on(
    small_storage: Path, tmp_path: Path
) -> None:
    import shutil

    storage = tmp_path / "s"
    shutil.copytree(small_storage, storage)
    bad = storage / "e0001/r00001/bhabha/bhabha.e0001.r00001.f00001.root"
    bad.write_bytes(bad.read_bytes()[:1000])
    result = b2cal_inline(*caf_run(storage, tmp_path / "o", "1-4", "ChannelT0"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"bad input file (ChannelT0): {bad}" in " ".join(result.stdout.split())
    outcome = json.loads((tmp_path / "o/ChannelT0/result.json").read_text())
    assert [b["path"] for b in outcome["bad_files"]] == [str(bad)]


def test_a_replaced_corrupt_file_is_taken_by_a_rerun_that_collects_only_its_job(
    small_storage: Path, tmp_path: Path
) -> None:
    """The normal recovery from a corrupt transfer: the good copy put in place, then ``caf run
    --rerun``; a plain resume refuses the replaced file and names the command."""
    import shutil

    storage, clean = tmp_path / "s", tmp_path / "clean"
    shutil.copytree(small_storage, storage)
    bad = storage / "e0001/r00001/bhabha/bhabha.e0001.r00001.f00001.root"
    good = bad.read_bytes()
    bad.write_bytes(good[:1000])
    args = caf_run(storage, tmp_path / "o", "1-4", "ChannelT0")
    assert b2cal_inline(*args).returncode == 0
    jobs = tmp_path / "o/ChannelT0/iterations/0/jobs"
    before = {s.parent.name: s.stat().st_mtime_ns for s in jobs.glob("*/status.json")}
    bad.write_bytes(good)  # transferred again
    refused = b2cal_inline(*args)
    assert_one_line_error(refused, "replaced since")
    said = " ".join(refused.stderr.split())
    assert str(bad) in said and "caf run --rerun ChannelT0 accepts the replaced files" in said
    taken = b2cal_inline(*args, "--rerun", "ChannelT0")
    assert taken.returncode == 0, taken.stdout + taken.stderr
    after = {s.parent.name: s.stat().st_mtime_ns for s in jobs.glob("*/status.json")}
    redone = sorted(job for job in before if after[job] != before[job])
    assert len(redone) == 1  # the job of the replaced file, the others kept
    outcome = json.loads((tmp_path / "o/ChannelT0/result.json").read_text())
    assert outcome["bad_files"] == []
    shutil.copytree(small_storage, clean)
    assert b2cal_inline(*caf_run(clean, tmp_path / "c", "1-4", "ChannelT0")).returncode == 0

    def payloads(output: Path) -> dict[str, bytes]:
        folder = output / "ChannelT0/outputdb"
        return {
            str(f.relative_to(folder)): f.read_bytes() for f in folder.rglob("*") if f.is_file()
        }

    ours = payloads(tmp_path / "o")
    assert len(ours) > 1 and ours == payloads(tmp_path / "c")  # byte-identical to a clean run


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--t0-jumps", "99"), "99"),
        (("--low-stat", "2:40"), "--low-stat takes RUN=EVENTS"),
        (("--events", "-5"), "events"),
    ],
)
def test_toy_generate_bad_arguments(tmp_path: Path, args: tuple[str, ...], fragment: str) -> None:
    result = b2cal_inline(
        "toy", "generate", "--storage", tmp_path / "s", "--exp", "1", "--runs", "1-3", *args
    )
    assert_one_line_error(result, fragment)


def test_missing_option_is_one_line() -> None:
    assert_one_line_error(b2cal_inline("caf", "run", "--exp", "1"), "Missing option")


def test_a_file_where_a_folder_belongs_is_one_line(small_storage: Path, tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    generate = ("toy", "generate", "--storage", afile, "--exp", "1", "--runs", "1")
    assert_one_line_error(b2cal_inline(*generate), "is a file, not a folder")
    run_into_file = caf_run(small_storage, afile, "1", "ChannelT0")
    assert_one_line_error(b2cal_inline(*run_into_file), "is a file, not a folder")
    workers = b2cal_inline(
        *caf_run(small_storage, tmp_path / "o", "1", "ChannelT0"), "--workers", "0"
    )
    assert_one_line_error(workers, "--workers must be at least 1")
    assert not (tmp_path / "o").exists()


def test_input_db_must_be_a_local_database(small_storage: Path, tmp_path: Path) -> None:
    args = (*caf_run(small_storage, tmp_path / "o", "1", "ChannelT0"), "--input-db", tmp_path)
    assert_one_line_error(b2cal_inline(*args), "is not a local database")
