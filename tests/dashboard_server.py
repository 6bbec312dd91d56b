"""The dashboard as a site runs it: ``python -m dashboard`` in its own process, stopped with
SIGTERM at the end (it must end by itself, cleanly)."""

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
    port: int
    process: subprocess.Popen[str]
    output: list[str] = field(default_factory=list)

    def log(self) -> str:
        return "".join(self.output)


@contextmanager
def served_dashboard(env: dict[str, str], *args: str, timeout: float = 60.0) -> Iterator[Served]:
    """The dashboard on a free loopback port; ``args`` go to ``python -m dashboard``."""
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
                served.port = int(line.rsplit(":", 1)[1].split("/", 1)[0])
                ready.set()
        ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        if not ready.wait(timeout) or served.port == 0:
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
