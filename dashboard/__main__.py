"""Serve the dashboard: ``python -m dashboard --site SITE --port PORT`` (``b2cal dashboard``
starts it for development; behind nginx at a site, the site's service manager runs it).

Without ``--user`` every request must come through a trusted TLS front (nginx) carrying the
identity it verified and the shared secret ``B2CAL_FRONT_SECRET`` (it does not start without
one: any program on the machine can connect from the front's address); with ``--user DN``
(development) it must listen on loopback, and every request is that person unless a trusted
front says otherwise.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import secrets
import signal
import socket
import sys
from typing import Any

import panel as pn

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
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=5006, help="port (0: any free one)")
    parser.add_argument("--user", default=None, help="development: act as this DN (loopback only)")
    parser.add_argument(
        "--origin",
        action="append",
        default=[],
        help="host[:port] browsers reach it at (the nginx front); repeatable",
    )
    return parser.parse_args(argv)


def serve(argv: list[str]) -> int:
    options = parse(argv)
    if options.user is not None and not loopback(options.host):
        raise B2CalError(
            f"--user is for development and needs a loopback address, not {options.host}"
        )
    settings = Settings()
    secret = settings.front_secret.get_secret_value() if settings.front_secret else None
    if options.user is None and not secret:
        raise B2CalError(
            "B2CAL_FRONT_SECRET is not set: behind its nginx front the dashboard believes "
            "identity headers only with the secret nginx sends (X-B2CAL-Front), so give both "
            "the same value (or use --user DN on loopback for development)"
        )
    site = load_site(options.site)
    db = StateDatabase(site.state_database_url)  # a service: it writes the action log
    gate = Gate(settings.trusted_proxies, options.user, secret)
    context.install(context.Dashboard(site, db, gate, settings))
    port = options.port or free_port(options.host)
    # Websockets (every click) are taken only from pages served under these hosts.
    origins = [*options.origin, f"{options.host}:{port}", f"localhost:{port}"]
    server: Any = pn.serve(
        ROUTES,
        port=port,
        address=options.host,
        show=False,
        start=False,
        websocket_origin=origins,
        title="b2cal",
        auth_provider=CertificateAuth(gate),
        # Sessions are signed: a client cannot bring a session token of its own making (with
        # somebody else's identity headers inside it).
        sign_sessions=True,
        secret_key=secrets.token_urlsafe(32),
        verbose=False,
    )
    server.start()
    port = server.port
    print(f"dashboard of site {site.name} on http://{options.host}:{port}/overview", flush=True)

    def stop(*_: object) -> None:
        server.io_loop.add_callback_from_signal(server.io_loop.stop)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.io_loop.start()
    finally:
        server.stop()
        db.close()
    print("dashboard stopped", flush=True)
    return 0


def main() -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s %(message)s"
    )
    try:
        return serve(sys.argv[1:])
    except B2CalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
