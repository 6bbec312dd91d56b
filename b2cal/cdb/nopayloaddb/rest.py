"""The HTTP layer: nopayloaddb's REST API under ``/api/cdb_rest/``, JSON in and out.

The server answers many errors with HTML pages (HTTP 500, also for a missing tag, status, list
or IoV), sometimes with JSON under HTTP 500 or 400; every non-JSON or error answer becomes a
one-line :class:`NopayloaddbError` naming the request and the HTTP status, with the server's
``detail`` when there is one. Paths must be exact: ``payloadiovs/`` needs its trailing slash
(without it: HTTP 301), every other path must not have one (HTTP 404); redirects are not
followed but reported.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any, Final, TypedDict
from urllib.parse import quote, urlsplit

import httpx

from b2cal.core.iov import ExpRun
from b2cal.errors import CdbError, NopayloaddbError

#: Where the API sits under a server's root URL.
API_PATH: Final = "/api/cdb_rest/"

#: The columns of a lookup row, for servers that answer lists instead of dicts.
_ROW = (
    "payload_type_name",
    "payload_url",
    "checksum",
    "size",
    "major_iov",
    "minor_iov",
    "major_iov_end",
    "minor_iov_end",
)


class ApiOptions(TypedDict, total=False):
    """How to reach a server, besides its URL (see :class:`NopayloaddbApi`)."""

    token: str | None
    transport: httpx.BaseTransport | None
    verify: ssl.SSLContext | bool
    timeout: float


def api_root(base_url: str) -> str:
    """The API's URL from a server's root URL or the API URL itself (both are accepted)."""
    parts = urlsplit(base_url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CdbError(f"not a nopayloaddb URL: {base_url!r} (expected http(s)://host[:port])")
    path = parts.path.rstrip("/")
    if not path.endswith(API_PATH.rstrip("/")):
        path += API_PATH.rstrip("/")
    return f"{parts.scheme}://{parts.netloc}{path}/"


def path_segment(name: str) -> str:
    """A name (of a global tag) as one segment of a request path."""
    return quote(name, safe="")


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _detail(answer: Any) -> str:
    """What a JSON error answer says: DRF's ``detail``, or its per-field messages."""
    if isinstance(answer, dict):
        if "detail" in answer:
            return str(answer["detail"])
        return "; ".join(
            f"{key}: {' '.join(map(str, value)) if isinstance(value, list) else value}"
            for key, value in answer.items()
        )
    return str(answer)


class NopayloaddbApi:
    """The server's REST API: JSON in and out, every failure a one-line NopayloaddbError.

    The bearer token goes on writes only: the server reads anonymously and, with JWT
    authentication configured, refuses writes without a valid token (HTTP 403). ``verify``
    takes an ``ssl.SSLContext`` (a site CA, a client certificate) or a bool; ``transport``
    replaces httpx's (tests).
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        transport: httpx.BaseTransport | None = None,
        verify: ssl.SSLContext | bool = True,
        timeout: float = 30.0,
    ) -> None:
        self.root = api_root(base_url)
        self._token = token
        self._timeout = timeout
        self._client = httpx.Client(
            base_url=self.root, transport=transport, verify=verify, timeout=timeout
        )

    def close(self) -> None:
        self._client.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        body: Any = None,
    ) -> Any:
        """One request; its decoded JSON answer."""
        what = f"nopayloaddb {method} {path}"
        headers = {}
        if self._token is not None and method != "GET":
            headers["Authorization"] = f"Bearer {self._token}"
        try:
            response = self._client.request(method, path, params=params, json=body, headers=headers)
        except httpx.TimeoutException:
            raise NopayloaddbError(
                f"{what}: no answer from {self.root} within {self._timeout:g} s"
            ) from None
        except httpx.HTTPError as exc:
            reason = _one_line(str(exc) or type(exc).__name__)
            raise NopayloaddbError(f"{what}: cannot reach {self.root} ({reason})") from None
        return self._answer(what, response)

    @staticmethod
    def _answer(what: str, response: httpx.Response) -> Any:
        status = response.status_code
        is_json = "json" in response.headers.get("content-type", "")
        answer: Any = None
        if is_json:
            try:
                answer = response.json()
            except ValueError:
                is_json = False
        if status >= 400 or (300 <= status < 400):
            detail = ""
            if is_json:
                reason = detail = _one_line(_detail(answer))
            elif "location" in response.headers:
                reason = f"redirected to {response.headers['location']}"
            else:
                reason = "an error page, not JSON"
            raise NopayloaddbError(f"{what}: HTTP {status}: {reason}", status, detail)
        if not is_json:
            kind = response.headers.get("content-type") or "no content type"
            raise NopayloaddbError(f"{what}: HTTP {status} but the answer is not JSON ({kind})")
        return answer

    def get(self, path: str, **params: str | int) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, body=body)

    def put(self, path: str, body: Any = None) -> Any:
        return self.request("PUT", path, body=body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    # --- requests with more to them than a path -----------------------------------------------
    def create_if_absent(self, path: str, body: dict[str, str]) -> None:
        """POST a named object; one that exists already (HTTP 400 saying so) is fine."""
        try:
            self.post(path, body)
        except NopayloaddbError as exc:
            if exc.status != 400 or "already exists" not in exc.detail:
                raise

    def set_status(self, tag: str, status: str) -> None:
        """Give the global tag ``tag`` the server status ``status``."""
        self.put(f"gt_change_status/{path_segment(tag)}/{status}")

    def lookup(self, tag: str, point: ExpRun) -> list[dict[str, Any]]:
        """The server's lookup: per payload type, the IoV with the latest start <= point.

        Rows come as dicts with ``shape=dict``; servers without that option answer lists in
        the order of their SQL query, which is read the same way.
        """
        rows = self.get(
            "payloadiovs/", gtName=tag, majorIOV=point.exp, minorIOV=point.run, shape="dict"
        )
        return [
            row if isinstance(row, dict) else dict(zip(_ROW, row, strict=False)) for row in rows
        ]
