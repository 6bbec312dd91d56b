"""``b2cal server up|status|down`` as a user runs it: the default local stack (Prefect on SQLite),
idempotent, a taken port refused, the Prefect profile written, a request run through it, and
nothing left running after ``down``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli import B2CAL, assert_one_line_error
from prefect_stack import free_port, processes_with, stack_environment
from waiting import wait_until

from b2cal.core.processes import started
from b2cal.toy.generate import generate_toy

pytestmark = pytest.mark.stack


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().split(")")[-1].split()[0] != "Z"


@pytest.fixture
def home(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    env = dict(os.environ, **stack_environment(tmp_path))
    env.pop("PREFECT_API_URL", None)
    env.pop("PREFECT_PROFILE", None)
    yield tmp_path, env
    subprocess.run([str(B2CAL), "server", "down"], env=env, capture_output=True, timeout=120)


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(B2CAL), *args], env=env, capture_output=True, text=True, timeout=300)


def test_server_up_status_down(home: tuple[Path, dict[str, str]]) -> None:
    folder, env = home
    port = str(free_port())
    users_profiles = folder / "user-prefect" / "profiles.toml"
    users_profiles.parent.mkdir(parents=True, exist_ok=True)
    users_profiles.write_text(USERS_PROFILES)
    up = run(env, "server", "up", "--port", port, "--no-discover", "--poll", "1")
    assert up.returncode == 0, up.stdout + up.stderr
    assert f"Prefect UI: http://127.0.0.1:{port}" in up.stdout
    said = " ".join(up.stdout.split())
    assert f"export PREFECT_API_URL=http://127.0.0.1:{port}/api" in said, said
    stack = json.loads((folder / "server" / "stack.json").read_text())
    pids = [stack["server_pid"], *stack["workers"].values(), *stack["reconcilers"].values()]
    assert len(pids) == 3 and all(alive(pid) for pid in pids)
    again = run(env, "server", "up", "--port", port, "--no-discover", "--poll", "1")
    assert again.returncode == 0 and "already up" in again.stdout, again.stdout + again.stderr
    assert json.loads((folder / "server" / "stack.json").read_text())["server_pid"] == pids[0]
    # the profile lets a shell's prefect reach the stack
    profiles = (folder / "user-prefect" / "profiles.toml").read_text()
    assert f'PREFECT_API_URL = "http://127.0.0.1:{port}/api"' in profiles
    listed = subprocess.run(
        [str(Path(str(B2CAL)).with_name("prefect")), "deployment", "ls"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "process-request/local" in listed.stdout.replace("\n", ""), listed.stdout
    # a request through the default stack (Prefect on SQLite)
    generate_toy(folder / "storage-local", 1, [1, 2], seed=4)
    assert run(env, "discover", "--site", "local").returncode == 0
    created = run(
        env,
        "request",
        "create",
        "--site",
        "local",
        "--exp",
        "1",
        "--runs",
        "1-2",
        "--calibrations",
        "ChannelT0",
    )
    assert created.returncode == 0, created.stdout + created.stderr
    waited = run(env, "request", "wait", "1", "--site", "local", "--timeout", "240")
    assert waited.returncode == 0, waited.stdout + waited.stderr
    assert "UPLOADED" in waited.stdout
    status = run(env, "server", "status")
    assert "healthy" in status.stdout and "reconciler local" in status.stdout, status.stdout
    os.kill(stack["reconcilers"]["local"], signal.SIGTERM)  # a service manager's stop
    wait_until(lambda: not alive(stack["reconcilers"]["local"]), 30, "the reconciler to stop")
    assert "reconciler of site local stopped" in (folder / "server" / "logs" /
                                                  "reconciler-local.log").read_text()  # fmt: skip
    status = run(env, "server", "status")
    said = " ".join(status.stdout.split())
    assert "reconciler local is not running: b2cal server up --sites local" in said, said
    # a run the worker launched, detached from it (its supervisor: here a stand-in process
    # with the launcher's record): listed by status, stopped by down
    detached = subprocess.Popen(["sleep", "300"], start_new_session=True)
    # ... and its engine, in a session of its own as Prefect's supervisor starts it
    engine = subprocess.Popen(["sleep", "301"], start_new_session=True,
                              env={**env, "PREFECT__FLOW_RUN_ID": "0123abcd-run"})  # fmt: skip
    record = {"host": socket.gethostname(), "pid": detached.pid, "started": started(detached.pid),
              "api_url": stack["api_url"]}  # fmt: skip
    runs = folder / "server" / "flow-runs"
    runs.mkdir(parents=True, exist_ok=True)
    (runs / "0123abcd-run.json").write_text(json.dumps(record))
    assert "flow run 0123abcd" in run(env, "server", "status").stdout
    down = run(env, "server", "down")
    assert down.returncode == 0, down.stderr
    assert f"stopped flow run 0123abcd-run (pid {detached.pid})" in down.stdout, down.stdout
    assert detached.wait(timeout=30) == -signal.SIGTERM
    assert engine.wait(timeout=30) == -signal.SIGTERM
    assert not any(alive(pid) for pid in pids)
    assert "stopped" in run(env, "server", "status").stdout
    found = tomllib.loads(users_profiles.read_text())
    assert found == tomllib.loads(USERS_PROFILES)  # the user's Prefect as found


#: A user's own Prefect profiles, active one included: ``server down`` puts them back.
USERS_PROFILES = 'active = "work"\n\n[profiles.work]\nPREFECT_API_URL = "https://p.example/api"\n'


def test_a_stack_whose_server_died_still_puts_the_profile_back(
    home: tuple[Path, dict[str, str]],
) -> None:
    """The server killed (a reboot, say), ``server up`` starts a new one: ``server down``
    still restores what the first ``up`` found, not the b2cal profile it left active."""
    folder, env = home
    users_profiles = folder / "user-prefect" / "profiles.toml"
    users_profiles.parent.mkdir(parents=True, exist_ok=True)
    users_profiles.write_text(USERS_PROFILES)
    port = str(free_port())
    assert run(env, "server", "up", "--port", port, "--no-discover").returncode == 0
    server = json.loads((folder / "server" / "stack.json").read_text())["server_pid"]
    os.kill(server, signal.SIGKILL)
    wait_until(lambda: not alive(server), 30, "the server to die")
    first = json.loads((folder / "server" / "stack.json").read_text())
    again = run(env, "server", "up", "--port", port, "--no-discover")
    assert again.returncode == 0, again.stdout + again.stderr
    assert 'active = "b2cal"' in users_profiles.read_text()
    # the dead server's worker and reconciler were stopped, not left running unrecorded
    assert not any(alive(pid) for kind in ("workers", "reconcilers")
                   for pid in first[kind].values())  # fmt: skip
    assert run(env, "server", "down").returncode == 0
    assert tomllib.loads(users_profiles.read_text()) == tomllib.loads(USERS_PROFILES)


def test_a_taken_port_is_refused(home: tuple[Path, dict[str, str]]) -> None:
    _, env = home
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        refused = run(env, "server", "up", "--port", port, "--no-discover")
    assert_one_line_error(refused, f"port {port} on 127.0.0.1 is taken")
    assert_one_line_error(run(env, "server", "up", "--sites", "cern"), "unknown site cern")


def test_a_failed_start_leaves_nothing_running(home: tuple[Path, dict[str, str]]) -> None:
    folder, env = home
    # a site that prefect.yaml deploys nothing for makes the registration fail after the
    # server started
    (folder / "sites" / "extra.toml").write_text(
        f'storage_roots = ["{folder}/extra"]\nwork_root = "{folder}/extra-work"\n'
    )
    failed = run(env, "server", "up", "--port", str(free_port()), "--no-discover",
                 "--sites", "local,extra")  # fmt: skip
    assert_one_line_error(failed, "no deployments for site extra")
    stack = json.loads((folder / "server" / "stack.json").read_text())
    assert "server_pid" not in stack and stack["workers"] == {}
    assert not (folder / "user-prefect" / "profiles.toml").exists()  # as found: none
    assert stack_processes(folder) == []
    assert processes_with(f"B2CAL_HOME={folder}", b"reconcile") == []


def stack_processes(folder: Path) -> list[int]:
    """Prefect processes started for this test's home."""
    return processes_with(f"B2CAL_HOME={folder}", b"prefect")
