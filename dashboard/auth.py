"""The dashboard's gate: every page and websocket request must carry an identity its TLS
front (nginx) vouched for — on the Unix socket only nginx's group can open — or be the
development server's named local user (over TCP on loopback, where identity headers are
refused). Anything else is sent to the refusal page, which says why."""

from __future__ import annotations

import html
import logging
from typing import Any

from bokeh.server.auth_provider import AuthProvider
from tornado.web import RequestHandler

from b2cal.auth.identity import Identity
from b2cal.auth.proxied import again, identity_from_front, identity_over_tcp
from b2cal.auth.trust import TrustFiles
from b2cal.errors import NotAuthenticated

log = logging.getLogger("b2cal.dashboard")
DENIED = "/denied"


class Gate:
    """Decides who a request is (shared by the auth provider and the pages).

    ``trust``: the CAs and CRLs of a dashboard behind its front (the socket), which the
    certificate nginx passes on is judged against; None for the development server, whose
    every request is ``local_user``.
    """

    def __init__(self, trust: TrustFiles | None, local_user: str | None, vo: str) -> None:
        self.trust = trust
        self.local_user = local_user
        self.vo = vo

    def identity(self, headers: Any) -> Identity:
        flat = {k: v if isinstance(v, str) else ",".join(v) for k, v in dict(headers).items()}
        if self.trust is None:
            return identity_over_tcp(flat, self.local_user)
        return identity_from_front(flat, self.trust.store(), self.vo)

    def again(self, identity: Identity) -> Identity:
        """The identity judged anew (its certificate against today's CRLs, its expiry): at
        each action of a session, which may have been open for hours."""
        if self.trust is None:
            return identity
        return again(identity, self.trust.store(), self.vo)


def _where(handler: RequestHandler) -> str:
    # On the socket Tornado has no client address (it says 0.0.0.0): nginx is the only client
    # there, and its access log has the browser's.
    ip = handler.request.remote_ip
    return "the front" if ip in (None, "", "0.0.0.0") else str(ip)


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
                return self.gate.identity(handler.request.headers).dn
            except NotAuthenticated as exc:
                log.warning("refused %s %s: %s", _where(handler), handler.request.path, exc.reason)
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
                    who = gate.identity(self.request.headers)
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
