"""`b2cal caf run` killed with SIGKILL mid-collection, then run again: it resumes.

Uses the SlowT0 plugin (the reference ChannelT0 with a collector that sleeps per file, one file
per job) so that the kill lands reliably while some jobs are finished and others are running.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from cli import b2cal, start_b2cal


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


@pytest.mark.slow
def test_sigkill_mid_collection_then_rerun_completes_without_redoing_jobs(
    small_storage: Path, tmp_path: Path
) -> None:
    output = tmp_path / "killed"
    process = start_b2cal(*caf_args(small_storage, output), plugins=True)
    deadline = time.monotonic() + 120
    while len(finished_jobs(output)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
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

    clean = tmp_path / "clean"
    assert b2cal(*caf_args(small_storage, clean), plugins=True).returncode == 0
    outputdb = Path("SlowT0/outputdb")
    files = sorted(p.name for p in (clean / outputdb).iterdir())
    assert files == sorted(p.name for p in (output / outputdb).iterdir())
    for name in files:
        assert (output / outputdb / name).read_bytes() == (clean / outputdb / name).read_bytes()


@pytest.mark.slow
def test_ctrl_c_stops_promptly_and_the_rerun_resumes(small_storage: Path, tmp_path: Path) -> None:
    output = tmp_path / "interrupted"
    process = start_b2cal(*caf_args(small_storage, output), plugins=True)
    deadline = time.monotonic() + 120
    while not finished_jobs(output) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert stderr.strip().splitlines()[-1] == "error: interrupted; rerun the same command to resume"
    assert len(finished_jobs(output)) < 8  # it stopped instead of finishing the collection
    assert not (output / "SlowT0/result.json").exists()
    rerun = b2cal(*caf_args(small_storage, output), plugins=True)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert len(finished_jobs(output)) == 8


@pytest.mark.slow
def test_a_second_run_on_a_busy_output_is_refused(small_storage: Path, tmp_path: Path) -> None:
    output = tmp_path / "busy"
    first = start_b2cal(*caf_args(small_storage, output), plugins=True)
    deadline = time.monotonic() + 120
    while not finished_jobs(output) and time.monotonic() < deadline:
        time.sleep(0.05)
    second = b2cal(*caf_args(small_storage, output), plugins=True)
    assert second.returncode == 1
    assert second.stderr.strip().endswith(
        "is in use: SlowT0 is being run by another b2cal process; wait for it to end"
    )
    first.communicate(timeout=120)
    assert first.returncode == 0
