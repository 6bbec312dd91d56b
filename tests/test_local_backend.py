"""The local backend as a site runs it: a worker killed mid-job fails only that job, which is
tried again (its attempts counted in its folder), while other calibrations' jobs in the same
pool go on untouched; the site's retries decide how often."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli import b2cal

from b2cal.caf.workspace import Workspace
from b2cal.toy.generate import generate_toy

pytestmark = pytest.mark.unit


def attempts(output: Path, name: str) -> dict[int, list[int]]:
    """Attempts of each job, by the run it reads."""
    found: dict[int, list[int]] = {}
    for job in Workspace(output).calibration(name).iteration(0).jobs():
        spec, submission = job.spec(), job.submission()
        assert spec is not None and submission is not None
        found.setdefault(spec.files[0].run, []).append(submission.attempt)
    return found


def test_a_killed_worker_fails_only_its_job_which_is_retried(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    generate_toy(storage, 1, range(1, 5), seed=9)
    markers = tmp_path / "markers"
    markers.mkdir()
    (markers / "r2.kill-once").touch()
    output = tmp_path / "out"
    ran = b2cal(
        "caf", "run", "--storage", storage, "--exp", "1", "--runs", "1-4",
        "--calibrations", "FlakyT0,SlowT0", "--output", output, "--workers", "2",
        plugins=True, env={"B2CAL_TEST_FLAKY": str(markers)},
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    flaky = attempts(output, "FlakyT0")
    assert sorted(flaky[2]) == [1, 2]  # the killed one, and the other job of run 2
    assert all(a == [1, 1] for run, a in flaky.items() if run != 2)
    assert {a for runs in attempts(output, "SlowT0").values() for a in runs} == {1}
    log = (output / "b2cal.log").read_text()
    assert "the worker process died (killed by SIGKILL" in log and "attempt 1 of 2" in log
