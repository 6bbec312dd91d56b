"""``b2cal toy generate`` and ``b2cal toy closure`` on bad input, and the help of every command,
through the real command."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from cli import assert_one_line_error, b2cal_inline
from typer.core import TyperGroup

from b2cal.cli import build_command

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Toy data of runs 1-2 and the output of a real ``caf run`` of ChannelT0 alone."""
    base = tmp_path_factory.mktemp("toy")
    storage, output = base / "storage", base / "output"
    generate = ("toy", "generate", "--storage", storage, "--exp", "1", "--runs", "1-2")
    made = b2cal_inline(*generate, "--files-per-run", "1", "--events", "600", "--seed", "3")
    assert made.returncode == 0, made.stderr
    run = ("caf", "run", "--exp", "1", "--runs", "1-2", "--calibrations", "ChannelT0")
    ran = b2cal_inline(*run, "--storage", storage, "--output", output, "--workers", "1")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    return storage / "truth.json", output


# --- toy closure ---------------------------------------------------------------------------------
def test_closure_refuses_a_missing_output_folder(toy: tuple[Path, Path], tmp_path: Path) -> None:
    truth, _ = toy
    result = b2cal_inline("toy", "closure", "--output", tmp_path / "nope", "--truth", truth)
    assert_one_line_error(result, "nope", "does not exist")
    assert result.stdout == ""


def test_closure_refuses_a_folder_that_is_not_a_caf_output(
    toy: tuple[Path, Path], tmp_path: Path
) -> None:
    truth, output = toy
    result = b2cal_inline("toy", "closure", "--output", tmp_path, "--truth", truth)
    assert_one_line_error(result, str(tmp_path), "is not the output of a b2cal calibration run")
    result = b2cal_inline("toy", "closure", "--output", output / "ChannelT0", "--truth", truth)
    assert_one_line_error(result, "is not the output of a b2cal calibration run")
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        (None, ("cannot read toy truth", "No such file or directory")),
        ("folder", ("cannot read toy truth", "Is a directory")),
        ("not json", ("is not a toy truth file", "Expecting value")),
        (json.dumps({"experiment": 1}), ("is not a toy truth file", "it has no 'runs'")),
    ],
)
def test_closure_refuses_a_truth_file_it_cannot_read(
    toy: tuple[Path, Path], tmp_path: Path, content: str | None, fragments: tuple[str, ...]
) -> None:
    _, output = toy
    truth = tmp_path / "truth.json"
    if content == "folder":
        truth.mkdir()
    elif content is not None:
        truth.write_text(content)
    result = b2cal_inline("toy", "closure", "--output", output, "--truth", truth)
    assert_one_line_error(result, str(truth), *fragments)
    assert result.stdout == ""


def test_closure_reports_calibrations_absent_from_the_output(toy: tuple[Path, Path]) -> None:
    truth, output = toy
    result = b2cal_inline(
        "toy",
        "closure",
        "--output",
        output,
        "--truth",
        truth,
        "--calibrations",
        "ChannelT0,BeamSpot",
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr == ""
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert rows.keys() == {"ChannelT0", "BeamSpot"}
    assert "FAIL" in rows["BeamSpot"]
    assert "BeamSpot is not in this output (it holds ChannelT0)" in rows["BeamSpot"]
    assert "nan" not in result.stdout


def test_closure_needs_a_calibration(toy: tuple[Path, Path]) -> None:
    truth, output = toy
    result = b2cal_inline(
        "toy", "closure", "--output", output, "--truth", truth, "--calibrations", " , "
    )
    assert_one_line_error(result, "--calibrations names no calibration")


# --- toy generate --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--t0-jumps", "99", "t0 jump at run(s) [99] outside the generated runs 1-3"),
        ("--low-stat", "2:40", "--low-stat takes RUN=EVENTS"),
        ("--low-stat", "7=40", "low-statistics run at run(s) [7]"),
        ("--events", "-5", "events per file must be >= 0, not -5"),
        ("--files-per-run", "0", "files per run must be at least 1, not 0"),
        ("--seed", "-1", "the seed must be >= 0"),
        ("--runs", "3-1", "it ends before it starts"),
    ],
)
def test_generate_refuses_bad_arguments_before_anything_is_shown_or_made(
    tmp_path: Path, option: str, value: str, message: str
) -> None:
    storage = tmp_path / "storage"
    arguments = {"--storage": str(storage), "--exp": "1", "--runs": "1-3", option: value}
    result = b2cal_inline("toy", "generate", *(x for item in arguments.items() for x in item))
    assert_one_line_error(result, message)
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1  # the error line alone: no progress bar drawn
    assert not storage.exists()


def test_generate_refuses_a_storage_holding_toy_data_or_a_file(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    args = ("toy", "generate", "--storage", storage, "--exp", "1", "--events", "20")
    assert b2cal_inline(*args, "--runs", "1-2").returncode == 0
    truth = (storage / "truth.json").read_bytes()
    again = b2cal_inline(*args, "--runs", "1-3", "--seed", "5")
    assert_one_line_error(again, "holds toy data already")
    assert again.stdout == ""
    assert (storage / "truth.json").read_bytes() == truth  # nothing was overwritten
    afile = tmp_path / "afile"
    afile.write_text("x")
    into_file = b2cal_inline("toy", "generate", "--storage", afile, "--exp", "1", "--runs", "1")
    assert_one_line_error(into_file, "is a file, not a folder")
    assert into_file.stdout == ""


# --- help ----------------------------------------------------------------------------------------
def command_paths() -> list[tuple[str, ...]]:
    """Every command and command group of ``b2cal``, the root included, as argument lists."""
    paths: list[tuple[str, ...]] = []

    def walk(command: object, path: tuple[str, ...]) -> None:
        paths.append(path)
        if isinstance(command, TyperGroup):
            for name, subcommand in command.commands.items():
                walk(subcommand, (*path, name))

    walk(build_command(), ())
    return paths


#: How typer names a value by its Python type: <bool>, <int>, <path>, <list[Path]>, <int,int> ...
TYPE_NAME = re.compile(r"<(?:bool|int|float|str|path|uuid|datetime|list|tuple|dict)\b[^>]*>")


@pytest.mark.parametrize("path", command_paths(), ids=lambda path: " ".join(path) or "b2cal")
def test_help_names_values_not_python_types(path: tuple[str, ...]) -> None:
    result = b2cal_inline(*path, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage: b2cal" in result.stdout
    assert TYPE_NAME.search(result.stdout) is None, result.stdout
    # A flag takes no value, so nothing stands between it and its help.
    assert re.search(r"--help\s+Show this message and exit\.", result.stdout), result.stdout


def test_help_walk_covers_every_command() -> None:
    paths = command_paths()
    assert {("toy", "generate"), ("toy", "closure"), ("caf", "run"), ("cdb", "upload")} <= set(
        paths
    )
