"""b2cal's HTTPS API server: TLS with client certificates (RFC 3820 proxies with VOMS
attributes, or plain user certificates), JSON in and out, one thread per connection.

Served by Python's ``ssl`` because nginx refuses proxy certificates. A connection proves its
identity once, at its start (:func:`b2cal.auth.identity.authenticate` over the chain it
sent); its requests then act as that person through the policy. Answers:

* 200 with the resource's JSON; 400 a body or value that is wrong (what is wrong is said);
* 401 a certificate that proves nobody (expired, revoked, forged VOMS attributes, another
  VO...), 403 an action the person's roles do not allow, 404 no such item or URL,
  405 a method the URL does not take, 409 the item has moved on (someone acted first, or the
  page was stale), 415 a body that is not ``application/json``;
* 500 an unexpected failure: one line, the traceback in the server's crash log.

Every refusal of a person is in the action log (the policy's and the state database's); every
refused connection is in the server's log with the reason.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import socket
import ssl
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from b2cal.api.routes import Api, MethodNotAllowed, route
from b2cal.auth.identity import Identity, authenticate
from b2cal.auth.tls import peer_chain, server_context
from b2cal.auth.trust import TrustStore
from b2cal.db.database import StateDatabase
from b2cal.errors import (
    B2CalError,
    NotAllowed,
    NotAuthenticated,
    StateConflict,
    UnknownRecord,
)
from b2cal.orchestration.actions import Person, person
from b2cal.settings import Settings
from b2cal.sites import Site

log = logging.getLogger("b2cal.api")
#: Largest body accepted (a request with its settings is a few kB).
MAX_BODY = 1 << 20
#: Seconds between checks whether the CAs, CRLs or VOMS certificates changed on disk
#: (fetch-crl replaces CRLs while the server runs).
TRUST_RELOAD_SECONDS = 60.0


class UnsupportedBody(B2CalError):
    """A body that is not JSON by its Content-Type."""


class TrustFiles:
    """The trust store, read again when its files change (at most once a minute)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._checked = 0.0
        self._stamp: tuple[tuple[str, float], ...] = ()
        self._store: TrustStore | None = None

    def _files(self) -> list[Path]:
        roots = [self.settings.ca_path, self.settings.crl_path, self.settings.voms_dir]
        files: list[Path] = []
        for root in filter(None, roots):
            if root.is_dir():
                files.extend(p for p in sorted(root.rglob("*")) if p.is_file())
            elif root.exists():
                files.append(root)
        return files

    def store(self) -> TrustStore:
        with self._lock:
            now = time.monotonic()
            if self._store is not None and now - self._checked < TRUST_RELOAD_SECONDS:
                return self._store
            self._checked = now
            stamp = tuple((str(p), p.stat().st_mtime) for p in self._files())
            if self._store is None or stamp != self._stamp:
                chosen = self.settings
                self._store = TrustStore.load(
                    [chosen.ca_path], [chosen.crl_path or chosen.ca_path], chosen.voms_dir
                )
                self._stamp = stamp
                log.info("trusting %s", self._store.describe())
            return self._store


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
        super().__init__(address, _Connection)

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
    identity: Identity | None = None
    valid_until: dt.datetime
    refusal: str = ""

    def setup(self) -> None:
        self.request.settimeout(30)
        super().setup()

    def handle(self) -> None:
        host = self.client_address[0]
        try:
            self.request.do_handshake()
        except (ssl.SSLError, OSError) as exc:
            reason = getattr(exc, "verify_message", None) or getattr(exc, "reason", None)
            log.warning("refused a TLS connection from %s: %s", host, reason or exc)
            return
        try:
            chain = peer_chain(self.request)
            self.identity = authenticate(chain, self.server.trust.store(), self.server.settings.vo)
            # A kept-alive connection must not outlive its proxy (or VOMS attributes: they
            # were checked valid now, and a proxy is never valid longer than they are meant).
            self.valid_until = min(c.not_valid_after_utc for c in chain)
            log.info("%s connected as %s (%s)", host, self.identity.dn, self.identity.via)
        except NotAuthenticated as exc:
            self.refusal = exc.reason
            log.warning("refused %s: %s", host, exc.reason)
        super().handle()

    def _person(self) -> Person | None:
        """Who asks now: the grants are read again for every request (a grant taken away, a
        member removed from the VO, counts at once), the credential's expiry checked."""
        if self.identity is None:
            return None
        if dt.datetime.now(dt.UTC) > self.valid_until:
            self.refusal = f"the certificate expired at {self.valid_until:%Y-%m-%d %H:%M} UTC"
            self.identity = None
            return None
        return person(self.server.api.db, self.identity, self.server.settings)

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

    def _body(self) -> dict[str, Any]:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            self.close_connection = True  # what follows cannot be told from the next request
            raise B2CalError(f"the body must have a Content-Length of 0 to {MAX_BODY} bytes")
        raw = self.rfile.read(length) if length else b""
        kind = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        if raw.strip() and kind != "application/json":
            # A browser page elsewhere may send forms and text/plain with the user's
            # certificate, never application/json without asking (CORS): so only JSON acts.
            raise UnsupportedBody(f"the body must be application/json, not {kind or 'untyped'}")
        if not raw.strip():
            return {}
        try:
            doc = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise B2CalError(f"the body is not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise B2CalError("the body must be a JSON object")
        return doc

    def _outcome(self, method: str, path: str) -> tuple[int, dict[str, Any]]:
        try:
            body = self._body()  # read whatever the method: a kept-alive connection goes on
            who = self._person()
            if who is None:
                return 401, {"error": f"not authenticated: {self.refusal}"}
            handler, ids = route(method, path)
            return 200, handler(self.server.api, who, ids, body)
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
        except B2CalError as exc:
            return 400, {"error": str(exc)}
        except Exception:
            return 500, {"error": self.server.record_crash(f"{method} {path}")}


def open_server(site: Site, host: str, port: int, settings: Settings | None = None) -> ApiServer:
    """The API of ``site`` listening on ``host:port`` (not yet serving): its certificate,
    the CAs, CRLs and VOMS servers read now, so a wrong path is an error before anything
    listens."""
    chosen = settings or Settings()
    trust = TrustFiles(chosen)
    trust.store()  # unreadable CAs, CRLs or VOMS certificates: an error now
    context = server_context(chosen.api_cert, chosen.api_key, chosen.ca_path)
    db = StateDatabase(site.state_database_url)  # a service: it writes the action log
    crash_log = chosen.home / "logs" / "api-crash.log"
    try:
        return ApiServer((host, port), context, Api(site, db), trust, chosen, crash_log)
    except OSError as exc:
        db.close()
        raise B2CalError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
