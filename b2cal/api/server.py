"""b2cal's HTTPS API server: TLS with client certificates (RFC 3820 proxies with VOMS
attributes, or plain user certificates), JSON in and out, one thread per connection.

Served by Python's ``ssl`` because nginx refuses proxy certificates. Every request is judged in
this order, and nothing of it is parsed or acted on before its turn:

1. the TLS handshake (a trusted CA, every validity period) within ``api_request_seconds``;
2. who the connection is (:func:`b2cal.auth.identity.authenticate` over the chain it sent:
   CRLs, proxy rules and policies, VOMS attributes), judged again whenever the trust files
   changed and once any credential it relies on expires — a revocation or an expired AC
   counts on a connection opened before it (``trust_reload_seconds``);
3. the URL and whether the person's roles allow that kind of action at all;
4. only then the body: at most ``MAX_BODY`` bytes, JSON nested at most ``MAX_DEPTH`` deep.

Answers:

* 200 with the resource's JSON; 400 a body or value that is wrong (what is wrong is said);
* 401 a certificate that proves nobody (expired, revoked, forged VOMS attributes, another
  VO...), 403 an action the person's roles do not allow, 404 no such item or URL,
  405 a method the URL does not take, 409 the item has moved on (someone acted first, or the
  page was stale), 415 a body that is not ``application/json``;
* 500 an unexpected failure: one line, the traceback in the server's crash log.

A client is bounded: a whole request must arrive within ``api_request_seconds`` of its first
byte, a kept-alive connection waits ``api_idle_seconds`` for the next one, and one address
holds at most ``api_connections_per_address`` connections (more are closed unanswered), so
idle or dripping clients cost a sleeping thread each for a bounded time and never hold up
the others. Every refusal of a person is in the action log (the policy's and the state
database's); every refused connection is in the server's log with the reason.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import socket
import ssl
import threading
import time
import traceback
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from b2cal.api.bounds import MAX_DEPTH, RequestClock, nesting_depth
from b2cal.api.routes import Api, Route, route
from b2cal.auth.identity import Identity, authenticate
from b2cal.auth.tls import peer_chain, server_context
from b2cal.auth.trust import TrustFiles, TrustStore
from b2cal.db.database import StateDatabase
from b2cal.errors import (
    B2CalError,
    MethodNotAllowed,
    NotAllowed,
    NotAuthenticated,
    SiteError,
    StateConflict,
    UnknownRecord,
    UnsupportedBody,
)
from b2cal.gateway.actions import Person, permit, person
from b2cal.settings import Settings
from b2cal.sites import Site

log = logging.getLogger("b2cal.api")
#: Largest body accepted (a request with its settings is a few kB).
MAX_BODY = 1 << 20


class ApiServer(ThreadingHTTPServer):
    """The listening socket; TLS handshakes happen in the connection's own thread, so a slow
    or broken client never holds up the others."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        context: ssl.SSLContext,
        api: Api,
        trust: TrustFiles,
        settings: Settings,
        crash_log: Path,
    ) -> None:
        self.context = context
        self.api = api
        self.trust = trust
        self.settings = settings
        self.crash_log = crash_log
        self._encoded: tuple[object, bytes] | None = None
        self._encoding = threading.Lock()
        self._open: Counter[str] = Counter()
        self._counted: dict[int, str] = {}
        self._refused_said: dict[str, float] = {}
        self._counting = threading.Lock()
        super().__init__(address, _Connection)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """At most ``api_connections_per_address`` connections from one address; one more is
        closed before its handshake (and said in the log once a minute per address)."""
        host = str(client_address[0])
        with self._counting:
            if self._open[host] >= self.settings.api_connections_per_address:
                now = time.monotonic()
                said = now - self._refused_said.get(host, -60.0) >= 60.0
                if said:
                    self._refused_said[host] = now
            else:
                self._open[host] += 1
                self._counted[id(request)] = host
                return True
        if said:
            log.warning(
                "refused connections from %s: it has %d open (api_connections_per_address)",
                host,
                self.settings.api_connections_per_address,
            )
        return False

    def shutdown_request(self, request: Any) -> None:
        with self._counting:
            host = self._counted.pop(id(request), None)
            if host is not None:
                self._open[host] -= 1
                if self._open[host] <= 0:
                    del self._open[host]
        super().shutdown_request(request)

    def encoded(self, doc: object) -> bytes:
        """The JSON of an answer. The status document is one object for its cache period,
        shared by every script polling it: encoded once for all of them."""
        with self._encoding:
            if self._encoded is not None and self._encoded[0] is doc:
                return self._encoded[1]
        body = (json.dumps(doc, indent=1, default=str) + "\n").encode()
        with self._encoding:
            self._encoded = (doc, body)  # holds ``doc``: its identity is not reused meanwhile
        return body

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = self.socket.accept()
        wrapped = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return wrapped, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.record_crash(f"connection from {client_address[0]}")

    def record_crash(self, where: str) -> str:
        """One line in the log, the traceback in the crash log; the line for the answer."""
        text = traceback.format_exc()
        self.crash_log.parent.mkdir(parents=True, exist_ok=True)
        with self.crash_log.open("a", encoding="utf-8") as out:
            out.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {where}\n{text}\n")
        last = text.strip().splitlines()[-1] if text.strip() else "unknown error"
        log.error("%s failed: %s (traceback in %s)", where, last, self.crash_log)
        return f"internal error: {last} (the server's crash log has the details)"


class _Connection(BaseHTTPRequestHandler):
    """One client connection: handshake, identity, then its requests (kept alive)."""

    protocol_version = "HTTP/1.1"
    server: ApiServer
    chain: list[Any]
    #: The last verdict on the chain, and the trust store it was reached with.
    _verdict: tuple[TrustStore | None, Identity | NotAuthenticated]
    _clock: RequestClock

    def setup(self) -> None:
        self.request.settimeout(self.server.settings.api_request_seconds)
        super().setup()
        chosen = self.server.settings
        self._clock = RequestClock(
            self.request, chosen.api_idle_seconds, chosen.api_request_seconds
        )
        self.rfile = io.BufferedReader(self._clock)
        self.chain = []
        self._verdict = (None, NotAuthenticated("no certificate was presented"))

    def handle(self) -> None:
        host = self.client_address[0]
        try:
            self.request.do_handshake()  # bounded as a whole by the socket's timeout
        except (ssl.SSLError, OSError) as exc:
            reason = getattr(exc, "verify_message", None) or getattr(exc, "reason", None)
            log.warning("refused a TLS connection from %s: %s", host, reason or exc)
            return
        self.chain = peer_chain(self.request)
        verdict = self._judged()
        if isinstance(verdict, Identity):
            log.info("%s connected as %s (%s)", host, verdict.dn, verdict.via)
        super().handle()

    def handle_one_request(self) -> None:
        self._clock.next_request()
        super().handle_one_request()

    def _judged(self) -> Identity | NotAuthenticated:
        """Who the connection is now: the chain judged again when the trust files changed
        (a CRL naming it, say) or once a credential it relies on (certificate, proxy, CRL,
        VOMS attributes) has expired."""
        store = self.server.trust.store()
        judged_with, verdict = self._verdict
        expired = (
            isinstance(verdict, Identity)
            and verdict.until is not None
            and dt.datetime.now(dt.UTC) >= verdict.until
        )
        if judged_with is store and not expired:
            return verdict
        try:
            verdict = authenticate(self.chain, store, self.server.settings.vo)
        except NotAuthenticated as exc:
            verdict = exc
            log.warning("refused %s: %s", self.client_address[0], exc.reason)
        self._verdict = (store, verdict)
        return verdict

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.client_address[0], format % args)

    def do_GET(self) -> None:
        self._answer("GET")

    def do_POST(self) -> None:
        self._answer("POST")

    def do_PUT(self) -> None:
        self._answer("PUT")

    def do_DELETE(self) -> None:
        self._answer("DELETE")

    def do_PATCH(self) -> None:
        self._answer("PATCH")

    def _answer(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        status, doc = self._outcome(method, path)
        body = self.server.encoded(doc)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _raw_body(self) -> bytes:
        """The body's bytes, unparsed: read whatever the method and whoever asks, so a
        kept-alive connection stays in step (within the request's time limit)."""
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            self.close_connection = True  # what follows cannot be told from the next request
            raise B2CalError(f"the body must have a Content-Length of 0 to {MAX_BODY} bytes")
        return self.rfile.read(length) if length else b""

    def _parsed(self, raw: bytes) -> dict[str, Any]:
        kind = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        if raw.strip() and kind != "application/json":
            # A browser page elsewhere may send forms and text/plain with the user's
            # certificate, never application/json without asking (CORS): so only JSON acts.
            raise UnsupportedBody(f"the body must be application/json, not {kind or 'untyped'}")
        if not raw.strip():
            return {}
        if nesting_depth(raw) > MAX_DEPTH:
            raise B2CalError(f"the body nests arrays and objects deeper than {MAX_DEPTH}")
        try:
            doc = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise B2CalError(f"the body is not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise B2CalError("the body must be a JSON object")
        return doc

    def _person(self) -> Person | NotAuthenticated:
        verdict = self._judged()
        if isinstance(verdict, NotAuthenticated):
            return verdict
        # The grants are read again for every request: a grant taken away, or a member the
        # VO no longer lists, counts at once.
        return person(self.server.api.db, verdict, self.server.settings)

    def _outcome(self, method: str, path: str) -> tuple[int, dict[str, Any]]:
        try:
            raw = self._raw_body()
            who = self._person()
            if isinstance(who, NotAuthenticated):
                return 401, {"error": str(who)}
            found: Route = route(method, path)
            if found.action is not None:  # allowed this kind of action at all, before reading
                permit(self.server.api.db, who, found.action, found.target)
            return 200, found.handler(self.server.api, who, found.ids, self._parsed(raw))
        except UnsupportedBody as exc:
            return 415, {"error": str(exc)}
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()
            )
            return 400, {"error": f"invalid values: {problems}"}
        except NotAllowed as exc:
            return 403, {"error": str(exc)}
        except UnknownRecord as exc:
            return 404, {"error": str(exc)}
        except StateConflict as exc:
            return 409, {"error": str(exc)}
        except MethodNotAllowed as exc:
            return 405, {"error": str(exc)}
        except SiteError as exc:
            # A site the server knows whose file cannot be used: the server's to fix, and its
            # paths are no business of the client's.
            log.error("%s %s: %s", method, path, exc)
            return 500, {"error": f"site {exc.site} cannot be used (the server's log says why)"}
        except B2CalError as exc:
            return 400, {"error": str(exc)}
        except Exception:
            return 500, {"error": self.server.record_crash(f"{method} {path}")}


def open_server(site: Site, host: str, port: int, settings: Settings | None = None) -> ApiServer:
    """The API of ``site`` listening on ``host:port`` (not yet serving): its certificate,
    the CAs, CRLs and VOMS servers read now, so a wrong path is an error before anything
    listens."""
    chosen = settings or Settings()
    trust = TrustFiles(
        chosen.ca_path, chosen.crl_path, chosen.voms_dir, chosen.trust_reload_seconds
    )
    trust.store()  # unreadable CAs, CRLs or VOMS certificates: an error now
    context = server_context(chosen.api_cert, chosen.api_key, chosen.ca_path)
    db = StateDatabase(site.state_database_url)  # a service: it writes the action log
    crash_log = chosen.home / "logs" / "api-crash.log"
    try:
        return ApiServer((host, port), context, Api(site, db), trust, chosen, crash_log)
    except OSError as exc:
        db.close()
        raise B2CalError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
