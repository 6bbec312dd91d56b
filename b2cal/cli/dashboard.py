"""``b2cal dashboard``: the Panel dashboard of this checkout (``python -m dashboard``) in a
child process, stopped on Ctrl-C or SIGTERM.

For development, ``--user DN`` over TCP on loopback: every request is that person (nothing
checks a certificate, so any other address is refused). At a site, behind nginx, ``--socket
PATH --socket-group GROUP --origin HOST``: a Unix socket only nginx's group can open
(deployments/nginx/, docs/dashboard.md).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
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
    socket: Annotated[
        Path | None,
        typer.Option(metavar="PATH", help="Behind nginx: listen on this Unix socket instead."),
    ] = None,
    socket_group: Annotated[
        str | None,
        typer.Option(metavar="GROUP", help="The group that may open the socket (nginx's)."),
    ] = None,
    origin: Annotated[
        list[str] | None,
        typer.Option(metavar="HOST[:PORT]", help="Behind nginx: the address browsers use."),
    ] = None,
) -> None:
    """Serve the dashboard: on loopback as --user for development, or on a Unix socket behind
    nginx (Ctrl-C stops it)."""
    from b2cal.orchestrator.stack import CHECKOUT

    if not (CHECKOUT / "dashboard" / "__main__.py").is_file():
        raise B2CalError(f"no dashboard/ in {CHECKOUT}: b2cal dashboard runs from a checkout")
    command = [sys.executable, "-m", "dashboard", "--host", host, "--port", str(port)]
    if site:
        command += ["--site", site]
    if user is not None:
        command += ["--user", user]
    if socket is not None:
        command += ["--socket", str(socket)]
    if socket_group is not None:
        command += ["--socket-group", socket_group]
    for each in origin or []:
        command += ["--origin", each]
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
