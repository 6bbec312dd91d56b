"""The local stack: a Prefect server on loopback, one process worker and one reconciler per
site, the deployments of ``prefect.yaml`` and the automations, started and stopped by
``b2cal server``.

Everything lives under ``B2CAL_HOME/server/``: the Prefect home (its SQLite database unless
``server up --prefect-database`` or ``B2CAL_PREFECT_DATABASE_URL`` names a PostgreSQL one), one
log per process, and
``stack.json`` with the API address and the process ids, so ``server status`` and
``server down`` find them and ``server up`` is idempotent. The server listens on 127.0.0.1
only: the Prefect API has no users, so people reach it through b2cal (and, with the dashboard,
through the certificate-checking proxy), never directly. ``B2CAL_PREFECT_AUTH_STRING``
(``user:password``) makes the API demand HTTP basic authentication as well.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from b2cal.core.files import atomic_write_json
from b2cal.core.processes import alive, group_alive, started, with_environment
from b2cal.errors import B2CalError
from b2cal.orchestrator.client import stack_folder, stack_state
from b2cal.orchestrator.launcher import running as detached_runs
from b2cal.orchestrator.profile import ProfileBefore, point_at, restore
from b2cal.settings import Settings
from b2cal.sites import Site, load_site, site_names

CHECKOUT = Path(__file__).resolve().parents[2]
#: Seconds a stopping process gets before it is killed.
STOP_SECONDS = 15.0
#: Flow runs send a heartbeat this often; the automation marks a run Crashed after
#: :data:`HEARTBEAT_TIMEOUT` seconds without one (its worker and process both gone).
HEARTBEAT_SECONDS = 30
HEARTBEAT_TIMEOUT = 90
#: A crash is seen within HEARTBEAT_TIMEOUT + RECONCILE_SECONDS (worker and process gone).
RECONCILE_SECONDS = 30.0


@dataclass(frozen=True)
class StackOptions:
    port: int = 4200
    sites: tuple[str, ...] = ("local",)
    discover: bool = True
    #: Seconds between a worker's polls of its pool (Prefect's default is 10).
    worker_poll_seconds: float = 2.0
    notify_url: str | None = None
    #: Seconds without a heartbeat after which a running flow run is marked Crashed.
    heartbeat_timeout: int = HEARTBEAT_TIMEOUT
    #: Seconds between the passes of each site's reconciler (crashes healed).
    reconcile_seconds: float = RECONCILE_SECONDS
    #: The Prefect server's database (``postgresql+asyncpg://…``); None: the environment's
    #: ``B2CAL_PREFECT_DATABASE_URL``, else SQLite in the stack's Prefect home.
    prefect_database: str | None = None


def _prefect() -> str:
    return str(Path(sys.executable).with_name("prefect"))


def _port_taken(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


class LocalStack:
    """The processes of the local stack and their record (``stack.json``)."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.folder = stack_folder(self.settings)
        self.prefect_home = self.folder / "prefect"
        self.auth_string = os.environ.get("B2CAL_PREFECT_AUTH_STRING") or None

    # --- the record -----------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return stack_state(self.settings) or {"workers": {}}

    def _save(self, state: dict[str, Any]) -> None:
        pids = [state.get("server_pid"), *state.get("workers", {}).values(),
                *state.get("reconcilers", {}).values()]  # fmt: skip
        known = state.get("started", {})
        state["started"] = {str(pid): known.get(str(pid)) or started(pid) for pid in pids if pid}
        atomic_write_json(self.folder / "stack.json", state)

    def ours(self, pid: int | None, state: dict[str, Any]) -> bool:
        """Whether ``pid`` is the process this stack started (alive, same start time)."""
        if not alive(pid):
            return False
        assert pid is not None
        recorded = state.get("started", {}).get(str(pid))
        return recorded is None or recorded == started(pid)

    def log(self, name: str) -> Path:
        return self.folder / "logs" / f"{name}.log"

    def _env(self, api_url: str | None = None, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            PREFECT_HOME=str(self.prefect_home),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_LOGGING_COLORS="false",
            B2CAL_HOME=str(self.settings.home),
            B2CAL_CHECKOUT=str(CHECKOUT),
        )
        env.pop("PREFECT_PROFILE", None)
        if api_url:
            env["PREFECT_API_URL"] = api_url
        if self.auth_string:
            env["PREFECT_API_AUTH_STRING"] = self.auth_string
        env.update(extra)
        return env

    def _spawn(self, name: str, command: list[str], env: dict[str, str]) -> int:
        """Start a service process in a session of its own (it outlives this command, as the
        user asked), its output appended to its log."""
        log = self.log(name)
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            out.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n".encode())
            process = subprocess.Popen(
                command,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=CHECKOUT,
            )
        return process.pid

    # --- up ---------------------------------------------------------------------------------
    def up(
        self, options: StackOptions, say: Callable[[str], None] = lambda _: None
    ) -> dict[str, Any]:
        """Start what is not running; idempotent. Returns the stack's record. If it fails
        half-way (or is interrupted), what this call started is stopped again."""
        sites = [load_site(name) for name in options.sites]
        prefect_database(options, self.prefect_home)  # a wrong URL refused before anything
        state = self.state()
        url = f"http://127.0.0.1:{options.port}/api"
        server = state.get("server_pid")
        started: list[int] = []
        try:
            if self.ours(server, state) and state.get("api_url") == url and _healthy(url):
                say(f"Prefect server already up at {url}")
            else:
                if self.ours(server, state):
                    raise B2CalError(
                        f"a Prefect server of this stack runs at {state.get('api_url')}: "
                        "b2cal server down first to move it to another port"
                    )
                if _port_taken(options.port):
                    raise B2CalError(
                        f"port {options.port} on 127.0.0.1 is taken by another program: "
                        "choose another with --port"
                    )
                # a new stack: the dead server's workers and reconcilers go with it (they
                # would serve an old address, unrecorded); what the first up found in the
                # user's profiles stays known
                for kind in ("workers", "reconcilers"):
                    for pid in state.get(kind, {}).values():
                        if self.ours(pid, state):
                            _stop_group(pid)
                kept = {k: state[k] for k in ("profile_before",) if k in state}
                state = {"workers": {}, **kept}
                state["server_pid"] = self._start_server(options, say)
                started.append(state["server_pid"])
                state["api_url"] = url
                state["auth_string"] = self.auth_string
                self._save(state)
                self._wait_healthy(url, state["server_pid"])
                say(f"Prefect server up at {url}")
            before = point_at(url, self.auth_string)
            state.setdefault("profile_before", before.model_dump())  # the first up's finding
            self._save(state)
            self._register(url, options, say)
            workers = dict(state.get("workers", {}))
            for site in sites:
                pid = workers.get(site.name)
                if self.ours(pid, state):
                    continue
                workers[site.name] = self._start_worker(url, site, options)
                started.append(workers[site.name])
                say(f"worker started for pool {site.work_pool} (site {site.name})")
            state["workers"] = workers
            reconcilers = dict(state.get("reconcilers", {}))
            for site in sites:
                if not self.ours(reconcilers.get(site.name), state):
                    reconcilers[site.name] = self._start_reconciler(url, site, options)
                    started.append(reconcilers[site.name])
            state["reconcilers"] = reconcilers
            state["ui_url"] = url.removesuffix("/api")
            self._save(state)
            return state
        except BaseException:
            for pid in reversed(started):  # nothing this call started outlives its failure
                _stop_group(pid)
            if started:
                recorded = self.state()
                if recorded.get("server_pid") in started:  # no stack: the profile as found
                    if recorded.get("profile_before") is not None:
                        restore(ProfileBefore.model_validate(recorded["profile_before"]))
                    recorded = {"workers": {}, "api_url": url}
                for kind in ("workers", "reconcilers"):
                    pids = recorded.get(kind, {})
                    recorded[kind] = {s: p for s, p in pids.items() if p not in started}
                self._save(recorded)
            raise

    def _start_server(self, options: StackOptions, say: Callable[[str], None]) -> int:
        self.prefect_home.mkdir(parents=True, exist_ok=True)
        extra = server_environment(options, self.prefect_home, self.auth_string)
        say("starting the Prefect server (the first start migrates its database: ~20 s)")
        port = str(options.port)
        command = [_prefect(), "server", "start", "--host", "127.0.0.1", "--port", port]
        return self._spawn("server", command, self._env(**extra))

    def _wait_healthy(self, url: str, pid: int, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _healthy(url):
                return
            if not alive(pid):
                raise B2CalError(f"the Prefect server stopped: {_tail(self.log('server'))}")
            time.sleep(0.3)
        raise B2CalError(
            f"the Prefect server did not answer within {timeout:.0f} s: {_tail(self.log('server'))}"
        )

    def _start_worker(self, url: str, site: Site, options: StackOptions) -> int:
        command = [
            _prefect(),
            "worker",
            "start",
            "--pool",
            site.work_pool,
            "--type",
            "process",
            "--name",
            f"b2cal-{site.name}",
        ]
        env = self._env(
            url,
            B2CAL_SITE=site.name,
            PREFECT_WORKER_QUERY_SECONDS=f"{options.worker_poll_seconds:g}",
            PREFECT_FLOWS_HEARTBEAT_FREQUENCY=str(HEARTBEAT_SECONDS),
        )
        return self._spawn(f"worker-{site.name}", command, env)

    def _start_reconciler(self, url: str, site: Site, options: StackOptions) -> int:
        """The site's reconciler (:mod:`b2cal.requests.reconciler`): a process of its own, not a
        run in the site's pool, so that it sees that pool's worker die."""
        every = f"{options.reconcile_seconds:g}"
        command = [sys.executable, "-m", "b2cal", "server", "reconcile", "--site", site.name,
                   "--every", every]  # fmt: skip
        return self._spawn(f"reconciler-{site.name}", command, self._env(url, B2CAL_SITE=site.name))

    # --- registration: pools, deployments, automations ------------------------------------
    def _register(self, url: str, options: StackOptions, say: Callable[[str], None]) -> None:
        from b2cal.orchestrator import discovery_runs
        from b2cal.orchestrator.registration import (
            activate_discovery,
            deployed_pools,
            ensure_automations,
            ensure_job_limits,
            ensure_pools,
        )

        env = self._env(url)
        os.environ["PREFECT_API_URL"] = url  # this process's client, for what follows
        if self.auth_string:
            os.environ["PREFECT_API_AUTH_STRING"] = self.auth_string
        # Only the sites served here: another site's pool, without a worker on this machine,
        # would show "Not Ready" in the UI for ever (a site deploys its own where it runs).
        served = [load_site(name) for name in options.sites]
        ensure_pools(deployed_pools(CHECKOUT / "prefect.yaml", served), served)
        ensure_job_limits(served)
        started = time.monotonic()
        names = [arg for site in served for arg in ("--name", f"*/{site.name}")]
        deploy = subprocess.run(
            [_prefect(), "--no-prompt", "deploy", *names],
            env=env,
            cwd=CHECKOUT,
            capture_output=True,
            text=True,
            check=False,
        )
        self.log("deploy").parent.mkdir(parents=True, exist_ok=True)
        self.log("deploy").write_text(deploy.stdout + deploy.stderr)
        if deploy.returncode != 0:
            raise B2CalError(f"prefect deploy failed: {_tail(self.log('deploy'))}")
        say(f"deployments registered from prefect.yaml ({time.monotonic() - started:.1f} s)")
        ensure_automations(options.heartbeat_timeout, options.notify_url)
        for site in served:  # a deploy leaves discovery on: set it as asked
            if options.discover:
                activate_discovery(site)
            else:
                discovery_runs.switch(site, on=False)

    # --- status and down --------------------------------------------------------------------
    def processes(self) -> list[tuple[str, int | None, bool]]:
        state = self.state()
        rows: list[tuple[str, int | None, bool]] = [
            ("server", state.get("server_pid"), self.ours(state.get("server_pid"), state))
        ]
        for kind in ("worker", "reconciler"):
            for site, pid in sorted(state.get(f"{kind}s", {}).items()):
                rows.append((f"{kind} {site}", pid, self.ours(pid, state)))
        return rows

    def down(self, say: Callable[[str], None] = lambda _: None) -> None:
        """Stop the reconcilers, the workers, the flow runs they started (detached from them:
        :mod:`b2cal.orchestrator.launcher`; their calibrations are interrupted, resumed by the
        next ``server up``), then the server."""
        state = self.state()
        pids = [(f"reconciler {s}", p) for s, p in state.get("reconcilers", {}).items()]
        pids += [(f"worker {s}", p) for s, p in state.get("workers", {}).items()]
        for name, pid in pids:
            if pid and self.ours(pid, state):
                _stop_group(pid)
                say(f"stopped {name} (pid {pid})")
        for flow_run, pid in detached_runs(state.get("api_url")).items():
            _stop_group(pid)
            # its engine, in a session of its own, may outlive its supervisor
            for engine in with_environment(f"PREFECT__FLOW_RUN_ID={flow_run}"):
                if alive(engine):
                    _stop_group(engine)
            say(f"stopped flow run {flow_run} (pid {pid})")
        server = state.get("server_pid")
        if server and self.ours(server, state):
            _stop_group(server)
            say(f"stopped server (pid {server})")
        state["workers"], state["reconcilers"] = {}, {}
        state.pop("server_pid", None)
        before = state.pop("profile_before", None)
        if before is not None:
            restore(ProfileBefore.model_validate(before))
            say("Prefect profile restored")
        self._save(state)


#: Task-run events the Prefect server writes in one transaction (its default: 1).
TASK_RUN_BATCH = 25
#: The database URLs the Prefect server takes (its async drivers).
DATABASE_SCHEMES = ("postgresql+asyncpg://", "sqlite+aiosqlite://")


def prefect_database(options: StackOptions, prefect_home: Path) -> str:
    """The Prefect server's database: the option, else ``B2CAL_PREFECT_DATABASE_URL``, else
    SQLite in the stack's Prefect home."""
    url = options.prefect_database or os.environ.get("B2CAL_PREFECT_DATABASE_URL")
    if not url:
        return f"sqlite+aiosqlite:///{prefect_home / 'prefect.db'}"
    if not url.startswith(DATABASE_SCHEMES):
        scheme = url.partition("://")[0] or url
        raise B2CalError(
            f"the Prefect server's database must be postgresql+asyncpg://USER:PASSWORD@HOST/DB "
            f"(or sqlite+aiosqlite:///FILE), not {scheme}://…"
        )
    return url


def server_environment(
    options: StackOptions, prefect_home: Path, auth_string: str | None = None
) -> dict[str, str]:
    """The Prefect settings of the stack's server (its environment on top of the stack's)."""
    extra = {
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": prefect_database(options, prefect_home),
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(options.port),
        # Say in the server log why a request was answered 503 (the client retries it).
        "PREFECT_API_LOG_RETRYABLE_ERRORS": "true",
        # Task runs reach the server as events, which its task-run recorder writes one per
        # transaction by default: a burst of them (a calibration's batches starting and
        # ending) holds SQLite's one writer lock against the API's writes. Up to
        # TASK_RUN_BATCH events in one transaction, at most 1 s after they came.
        "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": str(TASK_RUN_BATCH),
        "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "1",
    }
    if auth_string:
        extra["PREFECT_SERVER_API_AUTH_STRING"] = auth_string
    return extra


def _stop_group(pid: int) -> None:
    """SIGTERM to the process's group (its children too), SIGKILL to what is left of it if it
    does not go: it is stopped when no process of the group is left (a flow run's engine and
    collector processes still winding down after its supervisor went, say)."""
    try:
        group = os.getpgid(pid)
    except ProcessLookupError:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + STOP_SECONDS
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):  # reap it if it is our child
                os.waitpid(pid, os.WNOHANG)
            if not alive(pid) and not group_alive(group):
                return
            time.sleep(0.1)


def site_list(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    known = site_names()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise B2CalError(f"unknown site {', '.join(unknown)} (known: {', '.join(known)})")
    return names
