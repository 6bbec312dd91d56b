"""The launcher b2cal's pools start flow runs with (b2cal/orchestrator/launcher.py): its place
in the pool's job template, its records of running runs, its pruned logs. That a launched run
outlives its worker is tested on the real stack (test_orchestration_crashes.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from b2cal.orchestrator import launcher

pytestmark = pytest.mark.unit


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("B2CAL_HOME", str(tmp_path))
    return tmp_path


def test_the_pools_start_runs_through_the_launcher_without_streaming_their_output() -> None:
    from prefect.workers.process import ProcessWorker

    default = ProcessWorker.get_default_base_job_template()
    template = launcher.job_template(default)
    properties = template["variables"]["properties"]
    assert properties["command"]["default"] == f"{sys.executable} -m b2cal.orchestrator.launcher"
    assert properties["stream_output"]["default"] is False
    assert template["job_configuration"] == default["job_configuration"]  # what the worker reads
    assert default["variables"]["properties"]["command"]["default"] is None  # not changed


def test_the_running_runs_are_those_whose_recorded_process_lives(home: Path) -> None:
    folder = launcher.runs_folder()
    folder.mkdir(parents=True)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        from b2cal.core.processes import started

        host = os.uname().nodename
        records = {
            "live": {"pid": sleeper.pid, "started": started(sleeper.pid), "host": host},
            "reused-pid": {"pid": sleeper.pid, "started": "1", "host": host},
            "elsewhere": {"pid": sleeper.pid, "started": started(sleeper.pid), "host": "node9"},
            "ended": {"pid": 2**22 + 1, "started": "5", "host": host},
        }
        for name, record in records.items():
            (folder / f"{name}.json").write_text(json.dumps(record))
        (folder / "broken.json").write_text("{")
        assert launcher.running() == {"live": sleeper.pid}
        left = sorted(p.stem for p in folder.glob("*.json"))
        assert left == ["broken", "elsewhere", "live"]  # this host's ended records removed
    finally:
        sleeper.kill()
        sleeper.wait()


def test_logs_of_long_ended_runs_are_pruned_once_an_hour(home: Path) -> None:
    folder = launcher.runs_folder()
    folder.mkdir(parents=True)
    old = time.time() - (launcher.KEEP_LOGS_DAYS + 1) * 86400
    for name in ("ended", "running", "recent"):
        (folder / f"{name}.log").write_text("lines\n")
    (folder / "running.json").write_text("{}")
    for name in ("ended", "running"):
        os.utime(folder / f"{name}.log", (old, old))
    launcher._prune(folder)
    assert sorted(p.name for p in folder.glob("*.log")) == ["recent.log", "running.log"]
    os.utime(folder / "recent.log", (old, old))
    launcher._prune(folder)  # within the hour: nothing
    assert (folder / "recent.log").exists()


def test_the_launcher_needs_the_flow_run_the_worker_names(home: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != launcher.FLOW_RUN_ENV}
    ran = subprocess.run([*launcher.command()], env=env, capture_output=True, text=True, timeout=60)
    assert ran.returncode == 1
    assert ran.stderr.strip() == "error: PREFECT__FLOW_RUN_ID is not set: the worker sets it"
