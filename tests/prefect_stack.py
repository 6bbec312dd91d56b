"""One real local stack for the orchestration tests: a Prefect server on loopback, a process
worker per test site, the deployments of prefect.yaml and the automations, all started by
b2cal's own ``LocalStack`` (what ``b2cal server up`` runs), in a home folder of the test's.

The test sites (``local`` approves automatically, ``bnl`` waits for experts, ``desy`` has no
worker) keep their data and work under that home. A webhook receiver on loopback hears the
notifications.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cli import PLUGINS, TESTS

SITES = {
    "local": """
storage_roots = ["{home}/storage-local"]
work_root = "{home}/work-local"
settle_seconds = 0
[buckets]
runs = 8
[backend]
workers = 2
[signoff]
default = "auto"
""",
    "bnl": """
storage_roots = ["{home}/storage-bnl"]
work_root = "{home}/work-bnl"
settle_seconds = 0
[buckets]
runs = 4
[backend]
workers = 2
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
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for doc in list(self.received):
                if test(doc):
                    return doc
            time.sleep(0.2)
        raise AssertionError(f"nothing matching arrived in {timeout} s: {self.received}")


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
    thread = threading.Thread(target=server.serve_forever, daemon=True)
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
    for name, text in SITES.items():
        (sites / f"{name}.toml").write_text(text)
    path = [str(PLUGINS), str(TESTS), os.environ.get("PYTHONPATH", "")]
    return {
        "B2CAL_HOME": str(home),
        "B2CAL_SITES_DIR": str(sites),
        "PREFECT_HOME": str(home / "user-prefect"),
        "PYTHONPATH": os.pathsep.join(p for p in path if p),
        "COLUMNS": "200",
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
