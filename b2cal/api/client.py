"""The client side of b2cal's HTTPS API: acting commands given ``--api URL`` talk to a remote
site with the user's grid proxy (or certificate) instead of opening its databases.

The credential is found as grid tools find it: ``X509_USER_PROXY``, else the proxy that
``voms-proxy-init`` writes (``/tmp/x509up_u<uid>``), else ``X509_USER_CERT`` / ``X509_USER_KEY``
or ``~/.globus/usercert.pem`` and ``userkey.pem``. The server's host certificate is checked
against ``X509_CERT_DIR`` or the configured CAs. A refusal comes back as one line saying why.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx

from b2cal.auth.tls import client_context
from b2cal.errors import B2CalError
from b2cal.settings import Settings

#: Seconds to wait for the server (a sign-off starts a deployment run before it answers).
TIMEOUT = 60.0


def grid_credential() -> tuple[Path, Path | None]:
    """The user's proxy (one file: certificate, key, chain) or certificate and key."""
    proxy = os.environ.get("X509_USER_PROXY")
    if proxy:
        if not Path(proxy).is_file():
            raise B2CalError(f"X509_USER_PROXY names {proxy}, which does not exist")
        return Path(proxy), None
    default = Path(f"/tmp/x509up_u{os.getuid()}")
    if default.is_file():
        return default, None
    globus = Path.home() / ".globus"
    cert = Path(os.environ.get("X509_USER_CERT") or globus / "usercert.pem")
    key = Path(os.environ.get("X509_USER_KEY") or globus / "userkey.pem")
    if cert.is_file() and key.is_file():
        return cert, key
    raise B2CalError(
        "no grid credential: make a proxy (voms-proxy-init --voms belle) or set "
        "X509_USER_PROXY, or X509_USER_CERT and X509_USER_KEY"
    )


class ApiClient:
    """Requests to one site's API as the holder of one credential (one TLS connection, kept
    alive across calls)."""

    def __init__(
        self,
        url: str,
        credential: tuple[Path, Path | None] | None = None,
        cas: Path | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        cert, key = credential or grid_credential()
        trusted = cas or Path(os.environ.get("X509_CERT_DIR") or Settings().ca_path)
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url + "/api/v1",
            verify=client_context(cert, key, trusted),
            timeout=TIMEOUT,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, path: str) -> dict[str, Any]:
        return self._call("GET", path, None)

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", path, body)

    def _call(self, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        try:
            answer = self._http.request(method, path, json=body)
        except httpx.ConnectError as exc:
            raise B2CalError(f"cannot reach the b2cal API at {self.url}: {_reason(exc)}") from None
        except httpx.HTTPError as exc:
            raise B2CalError(f"the b2cal API at {self.url} failed: {_reason(exc)}") from None
        try:
            doc = answer.json()
        except ValueError:
            doc = {"error": answer.text.strip()[:200] or f"HTTP {answer.status_code}"}
        if answer.status_code != 200:
            raise B2CalError(f"{self.url}: {doc.get('error') or f'HTTP {answer.status_code}'}")
        if not isinstance(doc, dict):
            raise B2CalError(f"{self.url} answered {method} {path} with no JSON object")
        return doc


def _reason(exc: Exception) -> str:
    """The innermost reason (a TLS alert, a refused connection), not httpx's wrapping."""
    inner: BaseException = exc
    while inner.__cause__ is not None or inner.__context__ is not None:
        inner = inner.__cause__ or inner.__context__  # type: ignore[assignment]
    return str(inner) or type(inner).__name__
