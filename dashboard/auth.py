"""The dashboard's gate: every page and websocket request must carry an identity the TLS
front (nginx) vouched for, from a trusted proxy address — or be the development server's
named local user. Anything else is sent to the refusal page, which says why."""

from __future__ import annotations

import html
import logging
from typing import Any

from bokeh.server.auth_provider import AuthProvider
from tornado.web import RequestHandler

from b2cal.auth.identity import Identity
from b2cal.auth.proxied import identity_from_front
from b2cal.errors import NotAuthenticated

log = logging.getLogger("b2cal.dashboard")
DENIED = "/denied"


class Gate:
    """Decides who a request is (shared by the auth provider and the pages)."""

    def __init__(
        self, trusted_proxies: list[str], local_user: str | None, secret: str | None = None
    ) -> None:
        self.trusted_proxies = trusted_proxies
        self.local_user = local_user
        self.secret = secret

    def identity(self, headers: Any, peer: str) -> Identity:
        flat = {k: v if isinstance(v, str) else ",".join(v) for k, v in dict(headers).items()}
        return identity_from_front(flat, peer, self.trusted_proxies, self.local_user, self.secret)


class CertificateAuth(AuthProvider):  # type: ignore[misc]
    """Bokeh's hook: ``get_user`` for pages and websockets; refusals go to :data:`DENIED`."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        super().__init__()

    @property
    def get_user(self) -> Any:
        def user(handler: RequestHandler) -> str | None:
            if handler.request.path == DENIED:
                return "refused"  # the refusal page itself is open to all
            try:
                return self.gate.identity(handler.request.headers, handler.request.remote_ip).dn
            except NotAuthenticated as exc:
                log.warning(
                    "refused %s %s: %s", handler.request.remote_ip, handler.request.path, exc.reason
                )
                return None

        return user

    @property
    def login_url(self) -> str:
        return DENIED

    @property
    def login_handler(self) -> type[RequestHandler]:
        gate = self.gate

        class Denied(RequestHandler):
            def get(self) -> None:
                try:
                    who = gate.identity(self.request.headers, self.request.remote_ip)
                    reason = f"you are {who.dn}: go back to the dashboard"
                    self.set_status(200)
                except NotAuthenticated as exc:
                    reason = exc.reason
                    self.set_status(401)
                self.set_header("Content-Type", "text/html; charset=utf-8")
                self.write(
                    "<!doctype html><title>b2cal: not authenticated</title>"
                    f"<h1>b2cal dashboard</h1><p id='refusal'>{html.escape(reason)}</p>"
                )

        return Denied
