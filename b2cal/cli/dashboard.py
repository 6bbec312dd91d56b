"""``b2cal dashboard``: the Panel dashboard on this machine, for development.

It runs the checkout's ``dashboard/`` app (``python -m dashboard``) in a child process and
stops it on Ctrl-C or SIGTERM. ``--user DN`` names who the browser is; it is refused unless
the dashboard listens on loopback, since nothing then checks a certificate. Behind nginx at a
site the same app runs without ``--user`` (deployments/nginx/, docs/dashboard.md).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Annotated

import typer

from b2cal.cli.signals import Terminated
from b2cal.cli.sites import SiteOption
from b2cal.errors import B2CalError


def dashboard(
    site: SiteOption = None,
    host: Annotated[str, typer.Option(metavar="ADDRESS", help="Address (loopback).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(metavar="PORT", help="Port.")] = 5006,
    user: Annotated[
        str | None,
        typer.Option(metavar="DN", help="Act as this DN (its grants from the user registry)."),
    ] = None,
) -> None:
    """Serve the dashboard on loopback for development (Ctrl-C stops it)."""
    from b2cal.orchestration.stack import CHECKOUT

    if not (CHECKOUT / "dashboard" / "__main__.py").is_file():
        raise B2CalError(f"no dashboard/ in {CHECKOUT}: b2cal dashboard runs from a checkout")
    command = [sys.executable, "-m", "dashboard", "--host", host, "--port", str(port)]
    if site:
        command += ["--site", site]
    if user is not None:
        command += ["--user", user]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(CHECKOUT), os.environ.get("PYTHONPATH")])),
    }
    child = subprocess.Popen(command, cwd=CHECKOUT, env=env)
    try:
        code = child.wait()
    except (KeyboardInterrupt, Terminated):
        child.send_signal(signal.SIGTERM)
        child.wait(timeout=30)
        return
    if code != 0:
        raise typer.Exit(code)
