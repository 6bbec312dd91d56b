"""`b2cal caf run` killed with SIGKILL mid-collection, then run again: it resumes.

Uses the SlowT0 plugin (the reference ChannelT0 with a collector that sleeps per file, one file
per job) so that the kill lands reliably while some jobs are finished and others are running.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from cli import b2cal, start_b2cal

pytestmark = pytest.mark.unit


def caf_args(storage: Path, output: Path) -> list[str]:
    return [
        "caf", "run", "--storage", str(storage), "--exp", "1", "--runs", "1-4",
        "--calibrations", "SlowT0", "--output", str(output), "--workers", "2",
    ]  # fmt: skip


def finished_jobs(output: Path) -> dict[str, int]:
    """Finished collector jobs and the time their status was written."""
    found = {}
    for status in (output / "SlowT0/iterations/0/jobs").glob("*/status.json"):
        if json.loads(status.read_text())["state"] == "done":
            found[status.parent.name] = status.stat().st_mtime_ns
    return found


def started_run(
    storage: Path, output: Path, jobs_done: int = 1, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """A `caf run` of SlowT0 in the background, once ``jobs_done`` collector jobs finished."""
    process = start_b2cal(*caf_args(storage, output), plugins=True, env=env)
    deadline = time.monotonic() + 120
    while len(finished_jobs(output)) < jobs_done and time.monotonic() < deadline:
        time.sleep(0.05)
    return process


def assert_payloads_of_a_clean_run(storage: Path, output: Path, clean: Path) -> None:
    """``output`` holds bit for bit the payloads of an uninterrupted run (made in ``clean``)."""
    assert b2cal(*caf_args(storage, clean), plugins=True).returncode == 0
    outputdb = Path("SlowT0/outputdb")
    files = sorted(p.name for p in (clean / outputdb).iterdir())
    assert files == sorted(p.name for p in (output / outputdb).iterdir())
    for name in files:
        assert (output / outputdb / name).read_bytes() == (clean / outputdb / name).read_bytes()


def test_sigkill_mid_collection_then_rerun_completes_without_redoing_jobs(
    small_storage: Path, tmp_path: Path
) -> None:
    output = tmp_path / "killed"
    process = started_run(small_storage, output, jobs_done=2)
    os.killpg(process.pid, signal.SIGKILL)  # the command and its worker processes, mid-job
    process.wait()
    before = finished_jobs(output)
    assert 2 <= len(before) < 8, before
    assert not (output / "SlowT0/result.json").exists()

    rerun = b2cal(*caf_args(small_storage, output), plugins=True)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    after = finished_jobs(output)
    assert len(after) == 8
    assert {job: after[job] for job in before} == before  # finished jobs were not redone

    assert_payloads_of_a_clean_run(small_storage, output, tmp_path / "clean")


def test_ctrl_c_stops_promptly_and_the_rerun_resumes(small_storage: Path, tmp_path: Path) -> None:
    output = tmp_path / "interrupted"
    process = started_run(small_storage, output)
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert stderr.strip().splitlines()[-1] == "error: interrupted; rerun the same command to resume"
    assert len(finished_jobs(output)) < 8  # it stopped instead of finishing the collection
    assert not (output / "SlowT0/result.json").exists()
    rerun = b2cal(*caf_args(small_storage, output), plugins=True)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert len(finished_jobs(output)) == 8


def test_a_second_run_on_a_busy_output_is_refused(small_storage: Path, tmp_path: Path) -> None:
    output = tmp_path / "busy"
    # slow enough that it still runs when the second command starts on a loaded machine
    first = started_run(small_storage, output, env={"B2CAL_TEST_SLOW_SECONDS": "2"})
    second = b2cal(*caf_args(small_storage, output), plugins=True)
    assert second.returncode == 1
    assert second.stderr.strip().endswith(
        "is in use: SlowT0 is being run by another b2cal process; wait for it to end"
    )
    first.communicate(timeout=120)
    assert first.returncode == 0


def processes_in_group(group: int) -> list[str]:
    """The processes (pid and command) of a process group, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == group and fields[0] != "Z":
            found.append(f"{entry.name} {command}")
    return found


def leftover(group: int, seconds: float = 5.0) -> list[str]:
    """The processes of ``group`` still there after waiting up to ``seconds`` for them to go."""
    deadline = time.monotonic() + seconds
    while processes_in_group(group) and time.monotonic() < deadline:
        time.sleep(0.1)
    return processes_in_group(group)


def test_no_process_of_a_run_outlives_a_sigkill_of_its_driver(
    small_storage: Path, tmp_path: Path
) -> None:
    output = tmp_path / "killed"
    process = started_run(small_storage, output)
    assert len(processes_in_group(process.pid)) >= 3  # the driver and its two workers at least
    os.kill(process.pid, signal.SIGKILL)  # the driver only: nobody tells the workers
    process.wait()
    assert leftover(process.pid) == []


def test_sigterm_stops_like_ctrl_c_and_the_rerun_gives_identical_payloads(
    small_storage: Path, tmp_path: Path
) -> None:
    output = tmp_path / "terminated"
    # Slower jobs: a `caf status` runs between seeing two jobs done and the SIGTERM, and on a
    # loaded machine the other six 0.4 s jobs could all end meanwhile.
    slower = {"B2CAL_TEST_SLOW_SECONDS": "2"}
    process = started_run(small_storage, output, jobs_done=2, env=slower)
    log = (output / "b2cal.log").read_text()  # written as things happen, not at the end
    assert "SlowT0: iteration 0: collecting, 8 jobs" in log
    assert "collector jobs submitted to local" in log
    status = b2cal("caf", "status", output, "--json")
    row = json.loads(status.stdout)[0]
    assert row["state"] == "collecting" and row["active"] and row["done"] >= 2
    os.kill(process.pid, signal.SIGTERM)  # what a batch system sends at the wall time
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143
    assert stderr.strip().splitlines()[-1] == (
        "error: terminated (SIGTERM); rerun the same command to resume"
    )
    assert not (output / "SlowT0/result.json").exists()
    stopped = json.loads(b2cal("caf", "status", output, "--json").stdout)[0]
    assert stopped["state"] == "collecting" and not stopped["active"]
    assert leftover(process.pid) == []

    rerun = b2cal(*caf_args(small_storage, output), plugins=True)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert_payloads_of_a_clean_run(small_storage, output, tmp_path / "clean")
    assert "interrupted" in (output / "b2cal.log").read_text()


def test_sigterm_to_the_whole_group_is_an_interrupt_not_a_failure(
    small_storage: Path, tmp_path: Path
) -> None:
    """A batch system signals every process of a job: workers must not die as failed jobs."""
    output = tmp_path / "group"
    process = started_run(small_storage, output)
    os.killpg(process.pid, signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    assert not (output / "SlowT0/result.json").exists()  # no FAILURE recorded
    assert "failed" not in (output / "b2cal.log").read_text()
    assert leftover(process.pid) == []
    rerun = b2cal(*caf_args(small_storage, output), plugins=True)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
