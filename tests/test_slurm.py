"""The Slurm backend against a real single-node Slurm on loopback (tests/slurm_cluster.py):
job arrays, how each job ended and why, cancel, refusals, retries, the job limit, a killed
driver picked up again without submitting anything twice, and the four reference calibrations
giving the local backend's payloads byte for byte."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from cli import TESTS, b2cal, start_b2cal
from waiting import wait_until

from b2cal.backends.base import Job, JobHandle, JobReport, JobState, Limits
from b2cal.backends.slurm import SlurmBackend
from b2cal.caf.workspace import Workspace
from b2cal.errors import B2CalError
from b2cal.sites import JobResources
from b2cal.toy.generate import generate_toy

pytestmark = [pytest.mark.services, pytest.mark.usefixtures("slurm")]

TARGET = "job_targets:follow"
SITE = """
storage_roots = ["{root}/storage"]
work_root = "{root}/work"
[backend]
name = "slurm"
poll_seconds = 0.3
retries = 1
shared_roots = ["{root}"]
{extra}
"""


@pytest.fixture(autouse=True)
def _targets_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batch jobs get the submitter's environment: the tests' modules on their path."""
    paths = [str(TESTS), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("slurm-data")
    generate_toy(folder / "storage", 1, range(1, 5), seed=5)
    return folder / "storage"


def jobs(folder: Path, instructions: Sequence[str], **resources: object) -> list[Job]:
    made = []
    for number, instruction in enumerate(instructions):
        directory = folder / "jobs" / f"{number:04d}"
        directory.mkdir(parents=True)
        (directory / "instruction").write_text(instruction)
        made.append(Job(f"test.i0.j{number:04d}", directory, TARGET, JobResources(**resources)))
    return made


def until_finished(
    backend: SlurmBackend, handles: list[JobHandle], timeout: float = 120
) -> tuple[dict[str, JobReport], int]:
    """The final reports, and how many polls it took."""
    deadline, polls = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        reports = backend.poll(handles)
        polls += 1
        if all(r.state.finished for r in reports.values()):
            return reports, polls
        time.sleep(backend.poll_seconds)
    raise AssertionError(f"jobs still unfinished after {timeout} s: {reports}")


def site_env(root: Path, extra: str = "", **env: str) -> dict[str, str]:
    sites = root / "sites"
    sites.mkdir(exist_ok=True)
    (sites / "slurmtest.toml").write_text(SITE.format(root=root, extra=extra))
    return {"B2CAL_SITES_DIR": str(sites), "B2CAL_HOME": str(root / "home"), **env}


def caf_run(storage: Path, output: Path, calibrations: str, *more: str) -> list[str]:
    return [
        "caf", "run", "--storage", str(storage), "--exp", "1", "--runs", "1-4",
        "--calibrations", calibrations, "--output", str(output), *more,
    ]  # fmt: skip


def outputdb(output: Path, name: str) -> dict[str, bytes]:
    folder = Workspace(output).calibration(name).outputdb
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def arrays(output: Path, name: str) -> list[Path]:
    """The job lists of every array submitted for the calibration's first iteration."""
    return sorted((output / name / "iterations" / "0" / "jobs" / ".slurm").glob("array-*.jobs"))


def test_one_array_per_submission_and_each_job_ends_as_it_did(tmp_path: Path) -> None:
    backend = SlurmBackend(Limits(poll_seconds=0.3))
    submitted = jobs(tmp_path, ["ok", "exit 3", "kill", "ok", "sleep 1", "ok"])
    handles = backend.submit(submitted)
    assert backend.calls["sbatch"] == 1  # six jobs, one array
    assert len({h.job_id.split("_")[0] for h in handles}) == 1
    before = backend.calls["squeue"]
    reports, polls = until_finished(backend, handles)
    assert backend.calls["squeue"] - before == polls  # one squeue per poll, for all jobs
    states = [reports[h.job_id].state for h in handles]
    assert states == [JobState.DONE, JobState.FAILED, JobState.FAILED] + [JobState.DONE] * 3
    assert reports[handles[1].job_id].reason.startswith("exit status 3 on localhost")
    assert reports[handles[2].job_id].reason.startswith("killed by signal 9")
    out = (submitted[0].directory / "batch.out").read_text()
    assert out.startswith("hello from") and "ok" in out  # its stdout, in its own folder


def test_cancel_stops_jobs_and_refusals_are_clear(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = SlurmBackend(Limits(poll_seconds=0.3))
    handles = backend.submit(jobs(tmp_path / "sleepers", ["sleep 120"] * 3))
    deadline = time.monotonic() + 60
    while not all(r.state is JobState.RUNNING for r in backend.poll(handles).values()):
        assert time.monotonic() < deadline, "the sleepers never ran"
        time.sleep(0.3)
    backend.cancel(handles)
    reports, _ = until_finished(backend, handles, timeout=30)
    assert {r.state for r in reports.values()} == {JobState.CANCELLED}
    # a partition Slurm does not have: refused at once, in Slurm's words
    with pytest.raises(B2CalError, match="invalid partition specified: nope"):
        backend.submit(jobs(tmp_path / "nope", ["ok"], queue="nope"))
    # more wall time than the partition allows: failed, not left pending forever
    (over,) = backend.submit(jobs(tmp_path / "over", ["ok"], queue="short", wall_minutes=30))
    reports, _ = until_finished(backend, [over], timeout=60)
    assert reports[over.job_id].state is JobState.FAILED
    assert "Slurm will not start it: Partition" in reports[over.job_id].reason
    # a job folder batch nodes would not see
    shared = SlurmBackend(Limits(shared_roots=(tmp_path / "shared",)))
    with pytest.raises(B2CalError, match="is not on the shared filesystem"):
        shared.submit(jobs(tmp_path / "elsewhere", ["ok"]))
    # no Slurm commands at all
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    with pytest.raises(B2CalError, match="sbatch not found"):
        backend.submit(jobs(tmp_path / "nopath", ["ok"]))


def test_the_reference_calibrations_on_slurm_give_the_local_payloads(
    storage: Path, tmp_path: Path
) -> None:
    env = site_env(tmp_path)
    on_slurm = tmp_path / "slurm-output"
    ran = b2cal(*caf_run(storage, on_slurm, "ChannelGain,BeamSpot", "--site", "slurmtest"),
                env=env)  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    local = tmp_path / "local-output"
    assert b2cal(*caf_run(storage, local, "ChannelGain,BeamSpot", "--workers", "2")).returncode == 0
    for name in ("ChannelT0", "ChannelGain", "ModuleAlignment", "BeamSpot"):
        assert outputdb(on_slurm, name) == outputdb(local, name), name
        assert arrays(on_slurm, name)  # it did run on Slurm
    log = (on_slurm / "b2cal.log").read_text()
    assert "slurm backend" in log


def test_failed_jobs_are_retried_and_one_that_keeps_failing_fails_its_calibration(
    storage: Path, tmp_path: Path
) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    (markers / "r2.fail-once").touch()
    env = site_env(tmp_path, B2CAL_TEST_FLAKY=str(markers))
    output = tmp_path / "flaky"
    ran = b2cal(*caf_run(storage, output, "FlakyT0", "--site", "slurmtest"), plugins=True,
                env=env)  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    attempts: dict[int, list[int]] = {}  # by run: two files, two jobs each
    for job in Workspace(output).calibration("FlakyT0").iteration(0).jobs():
        spec, submission = job.spec(), job.submission()
        assert spec is not None and submission is not None
        attempts.setdefault(spec.files[0].run, []).append(submission.attempt)
    assert sorted(attempts[2]) == [1, 2]  # the job that failed once, and the other of run 2
    assert all(attempts[run] == [1, 1] for run in (1, 3, 4))
    # a job that fails every time: its calibration fails after the site's attempts, saying why
    (markers / "r3.fail-always").touch()
    failed = b2cal(*caf_run(storage, tmp_path / "poison", "FlakyT0", "--site", "slurmtest"),
                   plugins=True, env=env)  # fmt: skip
    assert failed.returncode == 2, failed.stdout + failed.stderr
    assert "run 3 fails every time" in failed.stdout + failed.stderr
    assert "after 2 attempts" in failed.stdout + failed.stderr
    # the input is mended: its jobs are resubmitted by hand and the rerun completes
    (markers / "r3.fail-always").unlink()
    poison = ["--output", str(tmp_path / "poison"), "--calibration", "FlakyT0"]
    listed = b2cal("jobs", "list", *poison, "--json", plugins=True, env=env)
    rows = json.loads(listed.stdout)["FlakyT0"]
    assert [r["number"] for r in rows if r["state"] == "failed"] == [4, 5]  # run 3's two files
    resubmitted = b2cal("jobs", "resubmit", *poison, plugins=True, env=env)
    assert "jobs 4, 5 start afresh" in resubmitted.stdout, resubmitted.stdout + resubmitted.stderr
    again = b2cal(*caf_run(storage, tmp_path / "poison", "FlakyT0", "--site", "slurmtest"),
                  plugins=True, env=env)  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr


def test_the_job_limit_keeps_at_most_that_many_jobs_queued_or_running(
    storage: Path, tmp_path: Path
) -> None:
    env = site_env(tmp_path, extra="job_limit = 3")
    output = tmp_path / "limited"
    seen: list[int] = []
    stop = threading.Event()

    def watch() -> None:  # what Slurm holds of ours, queued or running, while it runs
        while not stop.is_set():
            listed = subprocess.run(
                ["squeue", "-h", "-r", "-n", "b2cal-SlowT0.i0", "-t", "PENDING,RUNNING"],
                capture_output=True, text=True,
            ).stdout  # fmt: skip
            seen.append(len(listed.splitlines()))
            time.sleep(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        ran = b2cal(*caf_run(storage, output, "SlowT0", "--site", "slurmtest"), plugins=True,
                    env=env)  # fmt: skip
    finally:
        stop.set()
        watcher.join()
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert max(seen) == 3, seen  # the limit was reached, never passed
    submitted = arrays(output, "SlowT0")
    sizes = [len(p.read_text().splitlines()) for p in submitted]
    assert sum(sizes) == 8 and max(sizes) <= 3 and len(submitted) < 8, sizes


def test_a_killed_driver_is_picked_up_again_and_submits_nothing_twice(
    storage: Path, tmp_path: Path
) -> None:
    env = site_env(tmp_path)
    output = tmp_path / "killed"
    args = caf_run(storage, output, "SleepyT0", "--site", "slurmtest")
    driver = start_b2cal(*args, plugins=True, env=env)
    iteration = output / "SleepyT0" / "iterations" / "0" / "jobs"
    deadline = time.monotonic() + 120
    while len(list(iteration.glob("*/submission.json"))) < 8:
        assert time.monotonic() < deadline and driver.poll() is None, "jobs never submitted"
        time.sleep(0.1)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and its children; batch jobs stay
    driver.wait()
    submitted = arrays(output, "SleepyT0")
    ids = {p.parent.name: json.loads((p / "submission.json").read_text())["job_id"]
           for p in iteration.glob("0*")}  # fmt: skip
    assert not all((iteration / name / "status.json").exists() for name in ids)  # still going
    again = b2cal(*args, plugins=True, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert arrays(output, "SleepyT0") == submitted  # nothing submitted again
    after = {p.parent.name: json.loads((p / "submission.json").read_text())
             for p in iteration.glob("0*")}  # fmt: skip
    assert {name: doc["job_id"] for name, doc in after.items()} == ids
    assert {doc["attempt"] for doc in after.values()} == {1}
    assert "re-attached on slurm" in (output / "b2cal.log").read_text()


def test_jobs_left_by_a_killed_driver_are_listed_and_cancelled_on_purpose(
    storage: Path, tmp_path: Path
) -> None:
    env = site_env(tmp_path)
    output = tmp_path / "left"
    driver = start_b2cal(*caf_run(storage, output, "SleepyT0", "--site", "slurmtest"),
                         plugins=True, env=env)  # fmt: skip
    iteration = output / "SleepyT0" / "iterations" / "0" / "jobs"
    deadline = time.monotonic() + 120
    while len(list(iteration.glob("*/submission.json"))) < 8:
        assert time.monotonic() < deadline and driver.poll() is None, "jobs never submitted"
        time.sleep(0.1)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    where = ["--output", str(output), "--calibration", "SleepyT0", "--site", "slurmtest"]
    listed = b2cal("jobs", "list", *where, "--json", plugins=True, env=env)
    assert {r["state"] for r in json.loads(listed.stdout)["SleepyT0"]} == {"submitted"}
    cancelled = b2cal("jobs", "cancel", *where, plugins=True, env=env)
    assert "cancelled 8 slurm jobs" in cancelled.stdout, cancelled.stdout + cancelled.stderr

    def queued() -> str:
        return subprocess.run(
            ["squeue", "-h", "-r", "-n", "b2cal-SleepyT0.i0", "-t", "PENDING,RUNNING"],
            capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip

    wait_until(lambda: queued() == "", 30, "the cancelled jobs to leave the queue", every=0.2)
