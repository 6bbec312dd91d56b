"""The dashboard in its own process (``python -m dashboard``), stopped with SIGTERM at the
end (it must end by itself, cleanly): on a Unix socket behind nginx (tests/nginx_front.py), or
over TCP for development (``--user``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]


@dataclass
class Served:
    #: Where it listens: a TCP port (development) or a Unix socket (behind nginx).
    port: int
    process: subprocess.Popen[str]
    output: list[str] = field(default_factory=list)
    socket: str = ""

    def log(self) -> str:
        return "".join(self.output)


@contextmanager
def served_dashboard(env: dict[str, str], *args: str, timeout: float = 60.0) -> Iterator[Served]:
    """The dashboard with ``args`` (``--socket ...`` or ``--user DN``), on a free loopback
    port when it listens on TCP."""
    command = [sys.executable, "-m", "dashboard", "--host", "127.0.0.1", "--port", "0", *args]
    path = os.pathsep.join(filter(None, [str(CHECKOUT), env.get("PYTHONPATH")]))
    process = subprocess.Popen(
        command, cwd=CHECKOUT, env={**env, "PYTHONPATH": path}, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    served = Served(0, process)
    ready = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            served.output.append(line)
            if line.startswith("dashboard of site ") and not ready.is_set():
                where = line.split(" on ", 1)[1]
                if where.startswith("unix:"):
                    served.socket = where.removeprefix("unix:").split(" ", 1)[0]
                else:
                    served.port = int(where.rsplit(":", 1)[1].split("/", 1)[0])
                ready.set()
        ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        if not ready.wait(timeout) or not (served.port or served.socket):
            raise AssertionError(f"the dashboard did not start:\n{served.log()}")
        yield served
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        reader.join(timeout=5)
