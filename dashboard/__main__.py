"""Serve the dashboard.

At a site, behind nginx: ``python -m dashboard --site SITE --socket PATH --socket-group GROUP
--origin HOST`` listens on a Unix socket that only GROUP (nginx's) can open, mode 0660, and
takes the identity nginx passes on from every connection there (nothing else can connect).
For development: ``--user DN`` over TCP on loopback (``b2cal dashboard``), where every request
is that person and identity headers are refused. No TCP port is ever opened behind a front,
and Tornado's ``xheaders`` are never used: no client-written header decides anything.
"""

from __future__ import annotations

import argparse
import errno
import grp
import ipaddress
import logging
import os
import secrets
import signal
import socket
import stat
import sys
from pathlib import Path
from typing import Any

import panel as pn

from b2cal.auth.trust import TrustFiles
from b2cal.db.database import StateDatabase
from b2cal.errors import B2CalError
from b2cal.settings import Settings
from b2cal.sites import load_site
from dashboard import context
from dashboard.auth import CertificateAuth, Gate
from dashboard.layout import guarded
from dashboard.pages import calrun, cdb, log, overview, request, submit, users

ROUTES = {
    name: guarded(page.view)
    for name, page in [
        ("overview", overview), ("calrun", calrun), ("request", request), ("cdb", cdb),
        ("log", log), ("users", users), ("submit", submit),
    ]
}  # fmt: skip


#: The request headers a session token may carry (Bokeh copies the opening request's headers
#: into the token it embeds in every page, signed but readable). An allowlist, so that no
#: header the front adds — the user's certificate among them — ever reaches a browser; Bokeh's
#: ``exclude_headers`` would miss a name written in another case than Tornado's.
TOKEN_HEADERS = ["Host", "User-Agent", "Accept-Language"]
SOCKET_MODE = 0o660


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m dashboard", description=__doc__)
    parser.add_argument(
        "--site", default=None, help="site whose state it shows (default: B2CAL_SITE)"
    )
    parser.add_argument(
        "--socket", type=Path, default=None, help="behind nginx: the Unix socket to listen on"
    )
    parser.add_argument(
        "--socket-group",
        default=None,
        help="the group that may open the socket (nginx's; default: this process's)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="development: address (loopback)")
    parser.add_argument("--port", type=int, default=5006, help="development: port (0: any)")
    parser.add_argument("--user", default=None, help="development: act as this DN (loopback)")
    parser.add_argument(
        "--origin",
        action="append",
        default=[],
        help="host[:port] browsers reach it at (the nginx front); repeatable",
    )
    return parser.parse_args(argv)


def _check_socket_path(path: Path) -> None:
    """Refuse a socket another dashboard still answers on (Bokeh would silently replace
    it), and a path that is not a socket; a stale socket file is replaced."""
    if not path.parent.is_dir():
        raise B2CalError(f"no folder {path.parent} for the socket {path}")
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise B2CalError(f"{path} exists and is not a socket: refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return  # left by a dashboard that is gone
        raise B2CalError(f"cannot check the socket {path}: {exc.strerror or exc}") from None
    else:
        raise B2CalError(f"{path} already answers (another dashboard runs there): stop it first")
    finally:
        probe.close()


def _group_id(name: str | None) -> int:
    if name is None:
        return os.getgid()
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise B2CalError(
            f"no group {name!r} on this machine (nginx's group, e.g. www-data)"
        ) from None


def _open_socket(path: Path, group: int) -> None:
    """Bokeh made the socket 0600 for its own user: nginx's group may open it, nobody else."""
    try:
        os.chown(path, -1, group)
        os.chmod(path, SOCKET_MODE)
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise B2CalError(
            f"cannot give the socket {path} to group {group}: {exc.strerror or exc}"
        ) from None


def serve(argv: list[str]) -> int:
    options = parse(argv)
    settings = Settings()
    if options.socket is not None:
        if options.user is not None:
            raise B2CalError("--user is for development over TCP on loopback, not with --socket")
        if not options.origin:
            raise B2CalError(
                "behind nginx give --origin HOST[:PORT], the address browsers use (websockets "
                "from pages served under any other are refused)"
            )
        _check_socket_path(options.socket)
        group = _group_id(options.socket_group)
        files = TrustFiles(settings.ca_path, settings.crl_path, None, settings.trust_reload_seconds)
        files.store()  # unreadable CAs or CRLs: an error now, not at the first page
        trust: TrustFiles | None = files
    elif options.user is not None:
        if not loopback(options.host):
            raise B2CalError(
                f"--user is for development and needs a loopback address, not {options.host}"
            )
        trust = None
    else:
        raise B2CalError(
            "behind nginx the dashboard listens on a Unix socket (--socket PATH "
            "--socket-group GROUP); over TCP only for development, as one person (--user DN)"
        )
    site = load_site(options.site)
    gate = Gate(trust, options.user, settings.vo)
    port = options.port or free_port(options.host)
    where: dict[str, Any] = (
        {"unix_socket": str(options.socket)}
        if options.socket is not None
        else {"port": port, "address": options.host}
    )
    # Websockets (every click) are taken only from pages served under these hosts.
    origins = [*options.origin]
    if options.socket is None:
        origins += [f"{options.host}:{port}", f"localhost:{port}"]
    try:
        server: Any = pn.serve(
            ROUTES,
            **where,
            show=False,
            start=False,
            websocket_origin=origins,
            title="b2cal",
            auth_provider=CertificateAuth(gate),
            # Sessions are signed: a client cannot bring a session token of its own making.
            sign_sessions=True,
            secret_key=secrets.token_urlsafe(32),
            include_headers=TOKEN_HEADERS,
            include_cookies=[],
            verbose=False,
        )
    except (OSError, ValueError) as exc:
        place = options.socket or f"{options.host}:{port}"
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise B2CalError(f"cannot listen on {place}: {reason}") from None
    try:
        if options.socket is not None:
            _open_socket(options.socket, group)
        db = StateDatabase(site.state_database_url)  # a service: it writes the action log
    except B2CalError:
        server.stop()
        if options.socket is not None:
            options.socket.unlink(missing_ok=True)
        raise
    context.install(context.Dashboard(site, db, gate, settings))
    if options.socket is not None:
        print(
            f"dashboard of site {site.name} on unix:{options.socket} (mode 0660, group "
            f"{grp.getgrgid(group).gr_name}; nginx: proxy_pass http://unix:{options.socket}:)",
            flush=True,
        )
    else:
        print(f"dashboard of site {site.name} on http://{options.host}:{server.port}/overview",
              flush=True)  # fmt: skip
    server.start()

    def stop(*_: object) -> None:
        server.io_loop.add_callback_from_signal(server.io_loop.stop)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.io_loop.start()
    finally:
        server.stop()
        db.close()
        if options.socket is not None:
            options.socket.unlink(missing_ok=True)
    print("dashboard stopped", flush=True)
    return 0


def main() -> int:
    # The log on stdout as things happen; stderr holds only a refusal to start, in one line.
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s %(message)s",
        stream=sys.stdout,
    )
    bokeh = logging.getLogger("bokeh")  # Bokeh logs to stderr by a handler of its own
    bokeh.handlers.clear()
    bokeh.propagate = True
    try:
        return serve(sys.argv[1:])
    except B2CalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
