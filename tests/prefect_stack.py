"""One real local stack for the orchestration tests: a Prefect server on loopback, a process
worker per test site, the deployments of prefect.yaml and the automations, all started by
b2cal's own ``LocalStack`` (what ``b2cal server up`` runs), in a home folder of the test's.

The test sites (``local`` approves automatically and runs collections in batches of two jobs,
``bnl`` waits for experts and has a job limit of four, ``desy`` has no worker) keep their data
and work under that home. A webhook receiver on loopback hears the notifications. One stack
serves every orchestration test (the ``stack`` fixture of conftest.py, started once per
session: its start and the deployments cost ~25 s), with the Prefect server on PostgreSQL as a
site runs it: on SQLite, Prefect answers concurrent writes with 503 and its client waits
seconds before trying again, which would make timing checks such as "independent calibrations
overlap" depend on luck (the SQLite default is covered by tests/test_local_stack.py). Each test
uses its own experiment's data, so the tests do not depend on each other's order.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cli import B2CAL, PLUGINS, TESTS
from sql_databases import database_url
from sqlalchemy import create_engine, text
from waiting import wait_until

from b2cal.db.database import StateDatabase
from b2cal.db.states import CalRunState, RequestState
from b2cal.orchestrator.stack import LocalStack, StackOptions
from b2cal.toy.generate import generate_toy

PREFECT = Path(sys.executable).with_name("prefect")
S = CalRunState
CALIBRATION_NAMES = ("ChannelT0", "ChannelGain", "ModuleAlignment", "BeamSpot")

SITES = {
    "local": """
storage_roots = ["{home}/storage-local"]
work_root = "{home}/work-local"
settle_seconds = 0
[buckets]
runs = 8
[backend]
workers = 2
batch_size = 2
[signoff]
default = "auto"
""",
    "bnl": """
storage_roots = ["{home}/storage-bnl"]
work_root = "{home}/work-bnl"
settle_seconds = 0
[buckets]
runs = 4
[discovery]
scan_seconds = 2
run_minutes = 0.5
[backend]
workers = 2
job_limit = 4
[signoff]
default = "expert"
""",
    "desy": """
storage_roots = ["{home}/storage-desy"]
work_root = "{home}/work-desy"
settle_seconds = 0
[signoff]
default = "expert"
""",
}


def processes_with(environment_entry: str, command_part: bytes = b"") -> list[int]:
    """Processes whose environment holds ``environment_entry`` (``KEY=value``) and whose
    command line holds ``command_part``: what a test started, found without its PIDs."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            command = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if environment_entry.encode() in environ and command_part in command:
            found.append(int(proc.name))
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Receiver:
    """A webhook receiver on loopback: what it was sent, as JSON documents."""

    url: str = ""
    received: list[dict[str, Any]] = field(default_factory=list)

    def wait_for(
        self, test: Callable[[dict[str, Any]], bool], timeout: float = 60
    ) -> dict[str, Any]:
        def arrived() -> dict[str, Any] | None:
            return next((doc for doc in list(self.received) if test(doc)), None)

        return wait_until(arrived, timeout, f"a webhook document (got {self.received})", 0.2)


@contextmanager
def webhook_receiver() -> Iterator[Receiver]:
    receiver = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                receiver.received.append(json.loads(body))
            except ValueError:
                receiver.received.append({"raw": body.decode(errors="replace")})
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


def stack_environment(home: Path) -> dict[str, str]:
    """What the stack, the CLI and the tests need set: homes, sites, plugins on the path."""
    sites = home / "sites"
    sites.mkdir(parents=True, exist_ok=True)
    for name, site_file in SITES.items():
        (sites / f"{name}.toml").write_text(site_file)
    path = [str(PLUGINS), str(TESTS), os.environ.get("PYTHONPATH", "")]
    return {
        "B2CAL_HOME": str(home),
        "B2CAL_SITES_DIR": str(sites),
        "PREFECT_HOME": str(home / "user-prefect"),
        "PYTHONPATH": os.pathsep.join(p for p in path if p),
        "COLUMNS": "200",
        # markers that make the FlakyT0 test calibration fail (tests/plugins)
        "B2CAL_TEST_FLAKY": str(home / "flaky"),
    }


@contextmanager
def environment(values: dict[str, str], drop: tuple[str, ...] = ()) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in [*values, *drop]}
    os.environ.update(values)
    for key in drop:
        os.environ.pop(key, None)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@dataclass
class Stack:
    home: Path
    env: dict[str, str]
    api_url: str
    receiver: Receiver
    local: LocalStack
    toy: Path
    options: StackOptions

    def b2cal(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(B2CAL), *map(str, args)],
            capture_output=True,
            text=True,
            env=self.process_env(),
            timeout=300,
        )

    def prefect(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(PREFECT), *args],
            capture_output=True,
            text=True,
            env=self.process_env(),
            timeout=300,
        )

    def process_env(self) -> dict[str, str]:
        env = dict(os.environ, **self.env, PREFECT_API_URL=self.api_url)
        env.pop("PREFECT_PROFILE", None)
        return env

    def db(self) -> StateDatabase:
        return StateDatabase(f"sqlite:///{self.home / 'state.sqlite'}")

    def copy_toy(self, exp: int, site: str) -> None:
        source = self.toy / str(exp) / f"e{exp:04d}"
        shutil.copytree(source, self.home / f"storage-{site}" / f"e{exp:04d}")

    def workspace(self, site: str, request: int) -> Path:
        return self.home / f"work-{site}" / "requests" / str(request)

    @property
    def ui(self) -> str:
        """The Prefect UI's address (served by the same server as the API)."""
        return self.api_url.removesuffix("/api")


def prefect_server_url(url: str) -> str:
    """The Prefect server's URL of a test database (its asyncpg driver; pg_trgm it needs)."""
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
    engine.dispose()
    return url.replace("postgresql+psycopg://", "postgresql+asyncpg://")


@contextmanager
def running_stack(home: Path) -> Iterator[Stack]:
    """The stack the orchestration tests share, with toy data of several experiments."""
    toy = home / "toy"
    # exp 1: the demo's data set (closure); exp 2, 6, 8, 9, 13: four runs for the reference
    # calibrations; exp 3-5, 7, 10-12: one slow calibration each
    generate_toy(
        toy / "1", 1, range(1, 9), t0_jumps=[5], beamspot_changes=[4], low_stat={6: 60}, seed=2026
    )
    for exp in (2, 6, 8, 9, 13):  # 9, 13: acted on in a browser (test_dashboard_signoff.py)
        generate_toy(toy / str(exp), exp, range(1, 5), seed=exp)
    for exp in (3, 4, 5, 7, 10, 11, 12):  # 10-12: a lost node, stopped workers (crash tests)
        generate_toy(toy / str(exp), exp, range(1, 5), files_per_run=6, events=200, seed=exp)
    env = stack_environment(home)
    with database_url("postgresql", home) as prefect_db, webhook_receiver() as receiver:
        # The stack's environment only while it starts and stops: the tests that use it get
        # it per test (``in_stack``), and the other tests of the session never see it.
        starting = {**env, "B2CAL_PREFECT_DATABASE_URL": prefect_server_url(prefect_db)}
        own = functools.partial(environment, starting, drop=("PREFECT_API_URL", "PREFECT_PROFILE"))
        with own():
            local = LocalStack()  # it reads its settings (B2CAL_HOME) now
        options = StackOptions(
            port=free_port(),
            sites=("local", "bnl"),
            discover=False,
            worker_poll_seconds=1,
            notify_url=receiver.url,
            heartbeat_timeout=45,  # the shortest that Prefect's 30-s heartbeats allow safely
            reconcile_seconds=2,
        )
        try:
            with own():
                state = local.up(options)
            yield Stack(home, env, state["api_url"], receiver, local, toy, options)
        finally:
            with own():
                local.down()


@contextmanager
def inside(stack: Stack) -> Iterator[None]:
    """The stack's environment in this process too (the state database, the Prefect client)."""
    with environment({**stack.env, "PREFECT_API_URL": stack.api_url}, drop=("PREFECT_PROFILE",)):
        yield


@dataclass(frozen=True)
class PromptRequest:
    """The demo's prompt request (exp 1, bucket 1, the four reference calibrations at the
    ``local`` site, approved by its policy) run to its end, as a person starts it: what the
    commands said, and how long its run took."""

    request: int
    discovered: str
    created: str
    #: What ``request create --no-start`` said to run, as printed.
    command: list[str]
    seconds: float


def run_prompt_request(stack: Stack) -> PromptRequest:
    """Discover exp 1's data, create its bucket's request without starting it, and start it
    with the command it prints (``prefect deployment run … --watch``), to its end."""
    stack.copy_toy(1, "local")
    found = stack.b2cal("discover", "--site", "local")
    assert found.returncode == 0, found.stdout + found.stderr
    created = stack.b2cal(
        "request", "create", "--site", "local", "--exp", "1", "--bucket", "1", "--no-start"
    )
    request = created_request(created)
    said = "not started; start it with: prefect deployment run "
    assert said in created.stdout, created.stdout
    command = created.stdout.split(said)[1].split()
    started = time.monotonic()
    run = stack.prefect("deployment", "run", *command, "--watch")
    assert run.returncode == 0, run.stdout + run.stderr
    return PromptRequest(request, found.stdout, created.stdout, command, time.monotonic() - started)


def flow_runs(tag: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    with get_client(sync_client=True) as client:
        return list(
            client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag])))
        )


def request_state(stack: Stack, request_id: int) -> RequestState:
    with stack.db() as db:
        return db.request(request_id).state


def calruns(stack: Stack, request_id: int) -> dict[str, Any]:
    with stack.db() as db:
        return {c.calibration: c for c in db.calibration_runs(request_id)}


def created_request(result: subprocess.CompletedProcess[str]) -> int:
    assert result.returncode == 0, result.stdout + result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("created request"))
    return int(line.split()[2])


def flow_run_pids(flow_run_id: str) -> list[int]:
    """Processes running a flow run (the worker puts its id in their environment)."""
    return processes_with(f"PREFECT__FLOW_RUN_ID={flow_run_id}")


def flow_run_state(flow_run_id: str) -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run_id).state
        return state.type.value if state is not None else "NONE"


def flow_run_message(flow_run_id: str) -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run_id).state
        return (state.message or "") if state is not None else ""


def outputdb_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def task_runs(flow_run_id: object) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        return list(
            client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
        )


@contextmanager
def failing_always(stack: Stack, run: int) -> Iterator[None]:
    """FlakyT0's jobs of ``run`` (of any experiment) fail every time while inside: the
    marker is shared by the session's stack, so it never outlives the test."""
    marker = Path(stack.env["B2CAL_TEST_FLAKY"]) / f"r{run}.fail-always"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    try:
        yield
    finally:
        marker.unlink(missing_ok=True)


def done_jobs(stack: Stack, site: str, request: int, calibration: str) -> dict[str, int]:
    """Finished collector jobs of iteration 0: job folder -> mtime_ns of its status."""
    jobs = stack.workspace(site, request) / "output" / calibration / "iterations" / "0" / "jobs"
    found = {}
    for status in jobs.glob("*/status.json"):
        if json.loads(status.read_text()).get("state") == "done":
            found[status.parent.name] = status.stat().st_mtime_ns
    return found


def reference_output(
    stack: Stack, request: int, calibration: str, tmp_path: Path
) -> dict[str, bytes]:
    """The request's calibration run without Prefect, on the request's own input files: the
    payloads a clean run gives."""
    files = stack.workspace("local", request) / "files.json"
    with stack.db() as db:
        made = db.request(request)
    ran = stack.b2cal(
        "caf", "run", "--files-from", files, "--exp", str(made.exp),
        "--runs", f"{made.run_low}-{made.run_high}", "--calibrations", calibration,
        "--output", tmp_path / "reference",
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    return outputdb_bytes(tmp_path / "reference" / calibration / "outputdb")
