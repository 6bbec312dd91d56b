"""What a CAF user gets from `b2cal caf`: --config (with expert settings), --files-from,
--dry-run, --rerun, `caf status`, `caf inspect`, and warnings for runs without files.

Through the real command in a subprocess; the Counting plugin (tests/counting.py) makes every
number exact, the reference calibrations show that settings reach real algorithms.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli import assert_one_line_error, b2cal_inline

pytestmark = pytest.mark.unit


def run_args(output: Path, *extra: str | Path, calibrations: str = "Counting") -> list[str | Path]:
    return [
        "caf", "run", "--exp", "1", "--runs", "1-4", "--calibrations", calibrations,
        "--output", output, "--workers", "2", *extra,
    ]  # fmt: skip


def result(output: Path, calibration: str) -> dict[str, object]:
    doc: dict[str, object] = json.loads((output / calibration / "result.json").read_text())
    return doc


def database(output: Path, calibration: str) -> dict[str, bytes]:
    folder = output / calibration / "outputdb"
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- --config ----------------------------------------------------------------------------------
def test_config_overrides_and_expert_settings_reach_the_algorithm(
    small_storage: Path, tmp_path: Path
) -> None:
    config = write(
        tmp_path / "c.toml",
        "[Counting]\nmax_files_per_job = 1\n[Counting.settings]\nminimum = 100000\n"
        "[ChannelT0.settings]\nmin_peak_hits = 1000000\n",
    )
    out = tmp_path / "o"
    ran = b2cal_inline(
        *run_args(out, "--storage", small_storage, "--config", config,
                  calibrations="Counting,ChannelT0"),
        plugins=True,
    )  # fmt: skip
    assert ran.returncode == 2, ran.stdout + ran.stderr  # NOT_ENOUGH_DATA
    counting = result(out, "Counting")
    assert counting["result"] == "NOT_ENOUGH_DATA" and counting["jobs"] == 8
    t0 = result(out, "ChannelT0")
    assert t0["result"] == "NOT_ENOUGH_DATA"
    assert "fewer than 1000000 hits in their peak" in str(t0["message"])
    recorded = json.loads((out / "Counting/calibration.json").read_text())["config"]
    assert recorded == {"max_files_per_job": 1, "settings": {"minimum": 100000}}

    # the config is part of the run's identity
    other = write(tmp_path / "d.toml", "[Counting.settings]\nminimum = 99\n")
    again = b2cal_inline(
        *run_args(out, "--storage", small_storage, "--config", other,
                  calibrations="Counting,ChannelT0"),
        plugins=True,
    )  # fmt: skip
    assert_one_line_error(again, "config of Counting", "config of ChannelT0", "then", "now")


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("[Counting]\nmax_iteration = 2\n", ("[Counting.max_iteration]", "unknown key")),
        ("[Counting]\nmax_iterations = 'two'\n", ("[Counting.max_iterations]", "integer")),
        ("[Counting]\nmax_iterations = 0\n", ("[Counting.max_iterations]", "greater than")),
        ("[Counting.settings]\nminimun = 3\n", ("[Counting.settings.minimun]", "unknown key")),
        ("[Counting.settings]\nminimum = 'x'\n", ("[Counting.settings.minimum]",)),
        ("[Countng]\nmax_jobs = 2\n", ("[Countng]", "no calibration of that name")),
        ("[Counting.strategy]\nname = 'weekly'\n", ("[Counting.strategy.name]",)),
        ("[Counting\n", ("not TOML",)),
    ],
)
def test_bad_config_is_one_line_naming_key_and_file(
    small_storage: Path, tmp_path: Path, text: str, fragments: tuple[str, ...]
) -> None:
    config = write(tmp_path / "bad.toml", text)
    ran = b2cal_inline(
        *run_args(tmp_path / "o", "--storage", small_storage, "--config", config), plugins=True
    )
    assert_one_line_error(ran, str(config), *fragments)
    assert not (tmp_path / "o").exists()


def test_settings_for_a_calibration_without_settings_are_refused(
    small_storage: Path, tmp_path: Path
) -> None:
    config = write(tmp_path / "c.toml", "[CountingChild.settings]\nminimum = 5\n")
    ran = b2cal_inline(*run_args(tmp_path / "o", "--storage", small_storage, "--config", config,
                          calibrations="CountingChild"), plugins=True)  # fmt: skip
    assert_one_line_error(ran, "[CountingChild.settings]", "declares no expert settings")
    strategy = write(tmp_path / "s.toml", "[Counting.strategy]\nname = 'single_iov'\n")
    ok = b2cal_inline(*run_args(tmp_path / "p", "--storage", small_storage, "--config", strategy,
                         "--dry-run"), plugins=True)  # fmt: skip
    assert ok.returncode == 0 and "single_iov" in ok.stdout


# --- --files-from ------------------------------------------------------------------------------
def test_files_from_gives_the_payloads_storage_gives(small_storage: Path, tmp_path: Path) -> None:
    files = sorted(str(p) for p in small_storage.rglob("bhabha.*.root"))
    by_stream = write(tmp_path / "streams.json", json.dumps({"bhabha": files}))
    plain = write(tmp_path / "list.json", json.dumps(list(reversed(files))))
    outputs = {}
    for name, option in [("storage", ("--storage", small_storage)),
                         ("streams", ("--files-from", by_stream)),
                         ("list", ("--files-from", plain))]:  # fmt: skip
        ran = b2cal_inline(*run_args(tmp_path / name, *option), plugins=True)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        outputs[name] = database(tmp_path / name, "Counting")
    assert outputs["streams"] == outputs["storage"] == outputs["list"]


def test_files_from_refuses_missing_files_and_wrong_metadata(
    small_storage: Path, tmp_path: Path
) -> None:
    files = sorted(str(p) for p in small_storage.rglob("bhabha.*.root"))
    missing = write(tmp_path / "missing.json", json.dumps([*files, str(tmp_path / "gone.root")]))
    ran = b2cal_inline(*run_args(tmp_path / "o", "--files-from", missing), plugins=True)
    assert_one_line_error(ran, "gone.root: does not exist", "1 of 9 files cannot be used")
    wrong = write(tmp_path / "wrong.json", json.dumps({"mumu": files[:1]}))
    ran = b2cal_inline(*run_args(tmp_path / "o", "--files-from", wrong), plugins=True)
    assert_one_line_error(ran, "listed under stream mumu", "says stream bhabha")
    junk = tmp_path / "junk.root"
    junk.write_bytes(b"not ROOT")
    ran = b2cal_inline(*run_args(tmp_path / "o", "--files-from", write(tmp_path / "j.json",
                                                                  json.dumps([str(junk)]))),
                plugins=True)  # fmt: skip
    assert_one_line_error(ran, "junk.root", "cannot open as ROOT")
    both = b2cal_inline(
        *run_args(tmp_path / "o", "--files-from", missing, "--storage", small_storage)
    )
    assert_one_line_error(both, "exactly one of --storage DIR and --files-from FILE")
    assert not (tmp_path / "o").exists()


# --- --dry-run, runs without files ----------------------------------------------------------------
def test_dry_run_prints_the_plan_and_creates_nothing(small_storage: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    ran = b2cal_inline(
        "caf", "run", "--storage", small_storage, "--exp", "1", "--runs", "1-6",
        "--calibrations", "ChannelGain", "--output", out, "--dry-run",
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    text = " ".join(ran.stdout.split())
    assert "adding dependencies: ChannelT0" in text
    assert text.index("│ 1 │ ChannelT0") < text.index("│ 2 │ ChannelGain")
    assert "sequential_run_by_run" in text and "single_iov" in text
    assert "5-6" in text  # runs without files
    assert "ChannelT0: collector jobs of each iteration" in text
    assert "bhabha.e0001.r00004.f00001.root" in text  # every input file is listed
    assert "nothing was created" in text
    assert not out.exists()


def test_runs_without_files_are_warned_in_the_table_and_the_log(
    small_storage: Path, tmp_path: Path
) -> None:
    out = tmp_path / "o"
    args = ["caf", "run", "--storage", small_storage, "--exp", "1", "--runs", "1-6",
            "--calibrations", "Counting", "--output", out]  # fmt: skip
    ran = b2cal_inline(*args, plugins=True)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "no input files for runs 5-6" in " ".join(ran.stdout.split())
    assert "Counting: no input files for requested runs 5-6" in (out / "b2cal.log").read_text()


# --- --rerun -------------------------------------------------------------------------------------
def stamps(folder: Path, pattern: str) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.glob(pattern)}


def test_rerun_recomputes_exactly_a_calibration_and_its_dependants(
    small_storage: Path, tmp_path: Path
) -> None:
    out = tmp_path / "o"
    calibrations = "CountingChild,ChannelT0"
    first = b2cal_inline(*run_args(out, "--storage", small_storage, calibrations=calibrations),
                  plugins=True)  # fmt: skip
    assert first.returncode == 0, first.stdout + first.stderr
    results = stamps(out, "*/result.json")
    jobs = stamps(out, "*/iterations/*/jobs/*/status.json")
    before = {name: database(out, name) for name in ("Counting", "CountingChild", "ChannelT0")}

    # an algorithm-only change: Counting and its dependant are recomputed, nothing collected
    config = write(tmp_path / "c.toml", "[Counting.settings]\nminimum = 3000\n")
    rerun = b2cal_inline(*run_args(out, "--storage", small_storage, "--config", config,
                            "--rerun", "Counting", calibrations=calibrations),
                  plugins=True)  # fmt: skip
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "recomputing: Counting, CountingChild" in rerun.stdout
    after = stamps(out, "*/result.json")
    assert after["ChannelT0/result.json"] == results["ChannelT0/result.json"]
    assert after["Counting/result.json"] != results["Counting/result.json"]
    assert after["CountingChild/result.json"] != results["CountingChild/result.json"]
    assert stamps(out, "*/iterations/*/jobs/*/status.json") == jobs  # no job was run again
    assert {n: database(out, n) for n in before} == before  # same grouping: same payloads

    # a change that moves Counting's payloads: the dependant's jobs read them, so they rerun
    config.write_text("[Counting.settings]\nminimum = 100\n")
    moved = b2cal_inline(*run_args(out, "--storage", small_storage, "--config", config,
                            "--rerun", "Counting", calibrations=calibrations),
                  plugins=True)  # fmt: skip
    assert moved.returncode == 0, moved.stdout + moved.stderr
    now = stamps(out, "*/iterations/*/jobs/*/status.json")
    counting_jobs = [k for k in jobs if k.startswith("Counting/")]
    child_jobs = [k for k in jobs if k.startswith("CountingChild/")]
    assert all(now[k] == jobs[k] for k in counting_jobs)
    assert all(now[k] != jobs[k] for k in child_jobs)
    assert database(out, "Counting") != before["Counting"]  # run 3 is no longer merged


def test_rerun_of_a_calibration_not_in_the_output_is_refused(
    small_storage: Path, tmp_path: Path
) -> None:
    out = tmp_path / "o"
    assert b2cal_inline(*run_args(out, "--storage", small_storage), plugins=True).returncode == 0
    before = stamps(out, "**/*")
    ran = b2cal_inline(
        *run_args(out, "--storage", small_storage, "--rerun", "ChannelT0"), plugins=True
    )
    assert_one_line_error(ran, "has no calibration ChannelT0 to rerun", "it has Counting")
    assert stamps(out, "**/*") == before  # nothing changed
    nowhere = b2cal_inline(
        *run_args(tmp_path / "x", "--storage", small_storage, "--rerun", "Counting"), plugins=True
    )
    assert_one_line_error(nowhere, "is not the output of a b2cal calibration run")


# --- caf status, caf inspect -------------------------------------------------------------------
def test_status_and_inspect_after_a_run(small_storage: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    assert b2cal_inline(*run_args(out, "--storage", small_storage), plugins=True).returncode == 0
    status = b2cal_inline("caf", "status", out, "--json")
    assert status.returncode == 0, status.stderr
    rows = json.loads(status.stdout)
    assert rows[0] | {"last_error": ""} == {
        "calibration": "Counting", "state": "OK", "active": False, "iteration": 0,
        "jobs": 4, "done": 4, "failed": 0, "running": 0, "last_error": "",
    }  # fmt: skip
    table = b2cal_inline("caf", "status", out)
    assert table.returncode == 0 and "Counting" in table.stdout and "OK" in table.stdout

    inspect = b2cal_inline(
        "caf", "inspect", out, "Counting", "--run", "1", "--plot", tmp_path / "p.png"
    )
    assert inspect.returncode == 0, inspect.stderr
    text = " ".join(inspect.stdout.split())
    assert "events │ number │ 1200" in text  # two files of 600 events in run 1
    assert "nothing to plot" in text and not (tmp_path / "p.png").exists()  # numbers only
    assert_one_line_error(
        b2cal_inline("caf", "inspect", out, "Counting", "--run", "9"), "no data of run 9"
    )
    assert_one_line_error(b2cal_inline("caf", "inspect", out, "Nope"), "Nope is not a calibration")
    assert_one_line_error(b2cal_inline("caf", "status", tmp_path), "is not the output of a b2cal")


def test_inspect_plots_histograms(small_storage: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    args = ["caf", "run", "--storage", small_storage, "--exp", "1", "--runs", "1-2",
            "--calibrations", "ChannelT0", "--output", out]  # fmt: skip
    assert b2cal_inline(*args).returncode == 0
    inspect = b2cal_inline("caf", "inspect", out, "ChannelT0", "--plot", tmp_path / "t0.png")
    assert inspect.returncode == 0, inspect.stderr
    assert "hits │ 2-D histogram" in " ".join(inspect.stdout.split())
    assert (tmp_path / "t0.png").read_bytes()[:4] == b"\x89PNG"


def test_more_bad_input_is_one_line_and_changes_nothing(
    small_storage: Path, tmp_path: Path
) -> None:
    out = tmp_path / "o"
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00junk")
    ran = b2cal_inline(*run_args(out, "--storage", small_storage, "--config", binary), plugins=True)
    assert_one_line_error(ran, "binary.toml", "not UTF-8 text")
    flag = write(tmp_path / "flag.toml", "[Counting.settings]\nminimum = true\n")
    ran = b2cal_inline(*run_args(out, "--storage", small_storage, "--config", flag), plugins=True)
    assert_one_line_error(ran, "[Counting.settings.minimum]", "expected a number, not true")
    assert not out.exists()
    assert b2cal_inline(*run_args(out, "--storage", small_storage), plugins=True).returncode == 0
    before = stamps(out, "**/*")
    other = b2cal_inline(*run_args(out, "--storage", small_storage, "--dry-run", "--open-ended"),
                  plugins=True)  # fmt: skip
    assert_one_line_error(other, "was made with other arguments", "open_ended")
    assert other.stdout == ""  # not a word before the error
    plot = b2cal_inline("caf", "inspect", out, "Counting", "--plot", tmp_path / "plot.txt")
    assert_one_line_error(plot, "the plot is a PNG file")
    assert plot.stdout == ""
    assert stamps(out, "**/*") == before


def test_status_says_why_a_calibration_was_not_run(tmp_path: Path) -> None:
    from b2cal.toy.generate import generate_toy

    generate_toy(tmp_path / "s", 1, [1, 2], files_per_run=1, events=30, seed=3)
    out = tmp_path / "o"
    args = ["caf", "run", "--storage", tmp_path / "s", "--exp", "1", "--runs", "1-2",
            "--calibrations", "BeamSpot", "--output", out]  # fmt: skip
    assert b2cal_inline(*args).returncode == 2
    rows = {
        r["calibration"]: r for r in json.loads(b2cal_inline("caf", "status", out, "--json").stdout)
    }
    assert rows["ModuleAlignment"]["state"] == "NOT_ENOUGH_DATA"
    assert rows["BeamSpot"]["state"] == "not run"
    assert rows["BeamSpot"]["last_error"] == "dependency ModuleAlignment ended NOT_ENOUGH_DATA"


def test_inspect_splits_columns_of_several_components() -> None:
    import numpy as np

    from b2cal.caf.accumulator import Accumulator, Column
    from b2cal.caf.inspection import summarise

    rows = summarise(Accumulator(vertices=Column(np.array([[1.0, 10.0], [3.0, 30.0]]))))
    assert [(r.key, r.summary.split(";")[1].strip()) for r in rows] == [
        ("vertices[0]", "mean 2 std 1"),
        ("vertices[1]", "mean 20 std 10"),
    ]


def test_a_mended_file_is_taken_when_its_failed_jobs_are_resubmitted(
    small_storage: Path, tmp_path: Path
) -> None:
    """A file that breaks the collector every time is transferred again: ``jobs resubmit``
    takes the new copy (a plain resume before it refuses it) and only its jobs run again."""
    import shutil

    storage, markers, output = tmp_path / "s", tmp_path / "markers", tmp_path / "o"
    shutil.copytree(small_storage, storage)
    markers.mkdir()
    (markers / "r3.fail-always").touch()
    env = {"B2CAL_TEST_FLAKY": str(markers)}
    args = ["caf", "run", "--storage", storage, "--exp", "1", "--runs", "1-4",
            "--calibrations", "FlakyT0", "--output", output, "--workers", "1"]  # fmt: skip
    failed = b2cal_inline(*args, plugins=True, env=env)
    assert failed.returncode == 2 and "run 3 fails every time" in failed.stdout + failed.stderr
    jobs = output / "FlakyT0/iterations/0/jobs"
    before = {s.parent.name: s.stat().st_mtime_ns for s in jobs.glob("*/status.json")}
    (markers / "r3.fail-always").unlink()
    mended = storage / "e0001/r00003/bhabha/bhabha.e0001.r00003.f00000.root"
    copy = mended.read_bytes()
    mended.unlink()
    mended.write_bytes(copy)  # transferred again: another inode
    assert_one_line_error(b2cal_inline(*args, plugins=True, env=env), "replaced since")
    chosen = ["--output", output, "--calibration", "FlakyT0"]
    resubmitted = b2cal_inline("jobs", "resubmit", *chosen, plugins=True, env=env)
    assert resubmitted.returncode == 0, resubmitted.stdout + resubmitted.stderr
    again = b2cal_inline(*args, plugins=True, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    after = {s.parent.name: s.stat().st_mtime_ns for s in jobs.glob("*/status.json")}
    redone = sorted(name for name in after if before.get(name) != after[name])
    specs = {job.name: json.loads((job / "spec.json").read_text()) for job in jobs.iterdir()}
    run3 = sorted(n for n, spec in specs.items() if {f["run"] for f in spec["files"]} == {3})
    assert redone == run3 and len(run3) < len(after)  # run 3's jobs, the others kept
