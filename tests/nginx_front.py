"""The dashboard as a site runs it: nginx (the project's own configuration,
deployments/nginx/b2cal-dashboard.conf, filled with the test PKI's files) in front of
``python -m dashboard`` on a Unix socket.

The socket and nginx's working files sit in a folder outside pytest's private temporary
folder (which nginx's workers could not enter), owned by root and nginx's group, 0750; the
dashboard makes its socket 0660 for that group. nginx's CA and CRL bundles are written by the
shipped ``deployments/nginx/trust-update`` from a certificates folder in the grid's layout.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dashboard_server import Served, served_dashboard
from pki import PKI, Issued
from prefect_stack import free_port
from unavailable import unavailable

DEPLOYMENTS = Path(__file__).resolve().parents[1] / "deployments" / "nginx"
TEMPLATE = DEPLOYMENTS / "b2cal-dashboard.conf"
TRUST_UPDATE = DEPLOYMENTS / "trust-update"


def nginx_binary() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if found is None:
        unavailable("needs nginx (scripts/tools.sh installs it)")
    return found


def nginx_user() -> str:
    """Who nginx's workers run as: www-data when the tests run as root (as at a site), else
    the tests' own account (nginx cannot change user then)."""
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("www-data")
            return "www-data"
        except KeyError:
            return "nobody"
    return pwd.getpwuid(os.geteuid()).pw_name


def nginx_group() -> str:
    return grp.getgrgid(pwd.getpwnam(nginx_user()).pw_gid).gr_name


@contextmanager
def front_folder(keep: Path) -> Iterator[Path]:
    """A folder for the socket and nginx's working files, root:<nginx's group> 0750, removed
    at the end (nginx's logs are copied into ``keep`` first)."""
    folder = Path(tempfile.mkdtemp(prefix="b2cal-front-"))
    try:
        if os.geteuid() == 0:
            os.chown(folder, 0, grp.getgrnam(nginx_group()).gr_gid)
        folder.chmod(0o750)
        yield folder
    finally:
        keep.mkdir(parents=True, exist_ok=True)
        for log in folder.glob("logs/*.log"):
            shutil.copy(log, keep / log.name)
        shutil.rmtree(folder, ignore_errors=True)


def trust_update(certificates: Path, run: Path) -> subprocess.CompletedProcess[str]:
    """The shipped trust-update over a certificates folder, for the nginx whose files are in
    ``run`` (bundles ``cas.pem`` and ``crls.pem``, configuration ``nginx.conf``)."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin") + ":/usr/sbin:/sbin",
        "B2CAL_NGINX_CONF": str(run / "nginx.conf"),
        "B2CAL_NGINX_CAS": str(run / "cas.pem"),
        "B2CAL_NGINX_CRLS": str(run / "crls.pem"),
        "B2CAL_NGINX": nginx_binary(),
    }
    return subprocess.run(
        [str(TRUST_UPDATE), str(certificates)], env=env, capture_output=True, text=True
    )


@contextmanager
def nginx_front(run: Path, host: Issued, sock: Path, port: int) -> Iterator[int]:
    """nginx on 127.0.0.1:``port`` (yielded) proxying to the socket; its bundles
    (``run/cas.pem``, ``run/crls.pem``) must have been written by :func:`trust_update`."""
    binary = nginx_binary()
    logs = run / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    values = {
        "user": nginx_user(), "run": str(run), "logs": str(logs), "listen": f"127.0.0.1:{port}",
        "host_cert": str(host.cert_path), "host_key": str(host.key_path),
        "cas": str(run / "cas.pem"), "crls": str(run / "crls.pem"), "socket": str(sock),
    }  # fmt: skip
    text = TEMPLATE.read_text()
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    assert "{{" not in text.split("\nuser ", 1)[1], "a value of the template is unfilled"
    conf = run / "nginx.conf"
    conf.write_text(text)
    error_log = str(logs / "error.log")
    check = subprocess.run([binary, "-t", "-c", str(conf), "-e", error_log],
                           capture_output=True, text=True)  # fmt: skip
    assert check.returncode == 0, check.stderr
    process = subprocess.Popen([binary, "-c", str(conf), "-e", error_log],
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


@dataclass
class DashboardFront:
    """The dashboard behind nginx: the browsers' URL, the app, and the files of both."""

    url: str
    app: Served
    folder: Path
    socket: Path
    certificates: Path

    def trust_update(self) -> subprocess.CompletedProcess[str]:
        """What fetch-crl's postexec does after a CRL update: bundles, then nginx reloaded."""
        return trust_update(self.certificates, self.folder)


@contextmanager
def dashboard_behind_nginx(
    env: dict[str, str], pki: PKI, host: Issued, keep: Path, *args: str
) -> Iterator[DashboardFront]:
    """``python -m dashboard --socket`` (``args`` added) behind nginx with the test PKI's CA
    and CRLs in a certificates folder of the grid's layout (``keep/certificates``), which
    the dashboard reads too. ``env`` gets the trust settings."""
    certificates = pki.grid_folder(keep / "certificates")
    with front_folder(keep / "nginx-logs") as folder:
        sock = folder / "dashboard.sock"
        port = free_port()
        written = trust_update(certificates, folder)
        assert written.returncode == 0, written.stdout + written.stderr
        served_env = {**env, "B2CAL_CA_PATH": str(certificates)}
        served_env.pop("B2CAL_CRL_PATH", None)  # beside the CAs, as fetch-crl leaves them
        dashboard_args = ["--socket", str(sock), "--socket-group", nginx_group(),
                          "--origin", f"127.0.0.1:{port}", *args]  # fmt: skip
        with (
            served_dashboard(served_env, *dashboard_args) as app,
            nginx_front(folder, host, sock, port),
        ):
            yield DashboardFront(f"https://127.0.0.1:{port}", app, folder, sock, certificates)
