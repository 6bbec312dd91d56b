"""A real nginx on loopback in front of a dashboard: the project's own configuration
(deployments/nginx/b2cal-dashboard.conf) filled with the test PKI's files."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prefect_stack import free_port
from unavailable import unavailable

TEMPLATE = Path(__file__).resolve().parents[1] / "deployments" / "nginx" / "b2cal-dashboard.conf"
#: The address nginx connects to the dashboard from: the one address the dashboard trusts.
PROXY_ADDRESS = "127.0.0.2"
#: The secret nginx sends with its identity headers (the dashboard's B2CAL_FRONT_SECRET).
FRONT_SECRET = "test-front-secret-0123456789"


def nginx_binary() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if found is None:
        unavailable("needs nginx (scripts/tools.sh installs it)")
    return found


@contextmanager
def nginx_front(
    folder: Path, host_cert: Path, host_key: Path, cas: Path, crls: Path, upstream: int
) -> Iterator[int]:
    """nginx listening on a free loopback port (yielded), proxying to ``upstream``."""
    binary = nginx_binary()
    run = folder / "nginx"
    run.mkdir(parents=True, exist_ok=True)
    port = free_port()
    values = {
        "run": str(run), "listen": f"127.0.0.1:{port}", "host_cert": str(host_cert),
        "host_key": str(host_key), "cas": str(cas), "crls": str(crls),
        "proxy_address": PROXY_ADDRESS, "upstream": f"127.0.0.1:{upstream}",
        "front_secret": FRONT_SECRET,
    }  # fmt: skip
    text = TEMPLATE.read_text()
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    assert "{{" not in text.split("\nworker_processes", 1)[1], "a value of the template is unfilled"
    conf = run / "nginx.conf"
    conf.write_text(text)
    check = subprocess.run([binary, "-t", "-c", str(conf), "-e", str(run / "error.log")],
                           capture_output=True, text=True)  # fmt: skip
    assert check.returncode == 0, check.stderr
    process = subprocess.Popen([binary, "-c", str(conf), "-e", str(run / "error.log")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(
                    f"nginx ended: {process.stderr.read() if process.stderr else ''}"
                )
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.1)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
