"""The launcher b2cal's pools start flow runs with (b2cal/orchestrator/launcher.py): its place
in the pool's job template, its records of running runs, its pruned logs. That a launched run
outlives its worker is tested on the real stack (test_orchestration_crashes.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from b2cal.core.processes import started
from b2cal.orchestrator import launcher

pytestmark = pytest.mark.unit


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("B2CAL_HOME", str(tmp_path))
    return tmp_path


def test_the_pools_start_runs_through_the_launcher_unless_someone_set_another_command() -> None:
    from prefect.workers.process import ProcessWorker

    from b2cal.orchestrator.registration import launching

    default = ProcessWorker.get_default_base_job_template()
    template = launcher.job_template(default)
    properties = template["variables"]["properties"]
    ours = f"{sys.executable} -m b2cal.orchestrator.launcher"
    assert properties["command"]["default"] == ours
    assert properties["stream_output"] == default["variables"]["properties"]["stream_output"]
    assert template["job_configuration"] == default["job_configuration"]  # what the worker reads
    assert default["variables"]["properties"]["command"]["default"] is None  # not changed
    assert launching(default) == template
    moved = launcher.job_template(default)
    moved["variables"]["properties"]["command"]["default"] = "/old/venv/bin/python -m " + (
        "b2cal.orchestrator.launcher"
    )
    assert launching(moved) == template  # b2cal's own, from another install: brought up to date
    theirs = launcher.job_template(default)
    theirs["variables"]["properties"]["command"]["default"] = "site-wrapper prefect flow-run"
    assert launching(theirs) is None  # a site's own command is left alone
    assert launching({"job_configuration": {}}) is None  # not a process pool's template


def test_the_running_runs_are_those_whose_recorded_process_lives(home: Path) -> None:
    folder = launcher.runs_folder()
    folder.mkdir(parents=True)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        host, since = socket.gethostname(), started(sleeper.pid)
        api = "http://127.0.0.1:4200/api"
        records = {
            "live": {"pid": sleeper.pid, "started": since, "host": host, "api_url": api},
            "other-stack": {"pid": sleeper.pid, "started": since, "host": host, "api_url": "x"},
            "reused-pid": {"pid": sleeper.pid, "started": "1", "host": host},
            "no-start-time": {"pid": sleeper.pid, "started": None, "host": host},
            "elsewhere": {"pid": sleeper.pid, "started": since, "host": "node9"},
            "ended": {"pid": 2**22 + 1, "started": "5", "host": host},
        }
        for name, record in records.items():
            (folder / f"{name}.json").write_text(json.dumps(record))
        (folder / "broken.json").write_text("{")
        assert launcher.running(api) == {"live": sleeper.pid}
        assert launcher.running() == {"live": sleeper.pid, "other-stack": sleeper.pid}
        left = sorted(p.stem for p in folder.glob("*.json"))
        assert left == ["broken", "elsewhere", "live", "other-stack"]  # ended ones removed
    finally:
        sleeper.kill()
        sleeper.wait()


def test_logs_of_long_ended_runs_are_pruned_once_an_hour(home: Path) -> None:
    folder = launcher.runs_folder()
    folder.mkdir(parents=True)
    old = time.time() - (launcher.KEEP_LOGS_DAYS + 1) * 86400
    for name in ("ended", "running", "recent", "ended-unrecorded"):
        (folder / f"{name}.log").write_text("lines\n")
        os.utime(folder / f"{name}.log", (old, old))
    os.utime(folder / "recent.log")  # now
    here = socket.gethostname()
    (folder / "running.json").write_text(
        json.dumps({"pid": os.getpid(), "started": started(os.getpid()), "host": here})
    )
    (folder / "ended.json").write_text(json.dumps({"pid": 2**22 + 1, "started": "5", "host": here}))
    launcher._prune(folder)
    assert sorted(p.name for p in folder.glob("*.log")) == ["recent.log", "running.log"]
    assert sorted(p.name for p in folder.glob("*.json")) == ["running.json"]
    os.utime(folder / "recent.log", (old, old))
    launcher._prune(folder)  # within the hour: nothing
    assert (folder / "recent.log").exists()


def test_the_launcher_needs_the_flow_run_the_worker_names(home: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != launcher.FLOW_RUN_ENV}
    ran = subprocess.run([*launcher.command()], env=env, capture_output=True, text=True, timeout=60)
    assert ran.returncode == 1
    assert ran.stderr.strip() == "error: PREFECT__FLOW_RUN_ID is not set: the worker sets it"


def test_a_group_is_gone_once_only_zombies_are_left() -> None:
    """What ``server down`` waits for after stopping a run's group: a stopped process its
    parent has not yet read the status of does not hold it up."""
    from b2cal.core.processes import group_alive

    sleeper = subprocess.Popen(["sleep", "60"], start_new_session=True)
    assert group_alive(sleeper.pid)
    os.kill(sleeper.pid, 15)
    deadline = time.monotonic() + 10
    while group_alive(sleeper.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not group_alive(sleeper.pid)  # a zombie until the wait below
    assert sleeper.wait(timeout=10) == -15
