"""Reading the VO's member list over HTTP: b2cal's JSON format, or an INDIGO IAM server's SCIM
API page by page (the formats are described in :mod:`b2cal.auth.vo`). A list that cannot be
read is an error, and then nothing in the registry changes."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import httpx

from b2cal.auth.vo import VoMember, parse_members, parse_scim_users
from b2cal.errors import B2CalError

#: Users asked for per SCIM page.
PAGE = 100


def fetch_members(
    url: str,
    kind: str = "json",
    token: str | None = None,
    client: httpx.Client | None = None,
) -> list[VoMember]:
    """The VO's members from ``url``: b2cal's JSON format, or (``kind="scim"``) an IAM
    server's base URL; B2CalError if it cannot be read (nothing is changed then)."""
    if kind not in ("json", "scim"):
        raise B2CalError(f"the VO member source must be json or scim, not {kind!r}")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    own = client is None
    http = client or httpx.Client(timeout=30.0)
    try:
        if kind == "json":
            return parse_members(_get(http, url, headers), url)
        return parse_scim_users(list(_scim_pages(http, url, headers)), url)
    finally:
        if own:
            http.close()


def _get(http: httpx.Client, url: str, headers: dict[str, str], **params: int) -> Any:
    try:
        response = http.get(url, headers=headers, params=params)
    except httpx.HTTPError as exc:
        raise B2CalError(f"the VO member list {url} cannot be reached: {exc}") from None
    if response.status_code != 200:
        raise B2CalError(f"the VO member list {url} answered HTTP {response.status_code}")
    try:
        return response.json()
    except ValueError:
        raise B2CalError(f"the VO member list {url} is not JSON") from None


def _scim_pages(http: httpx.Client, base: str, headers: dict[str, str]) -> Iterator[Any]:
    url = base.rstrip("/") + "/scim/Users"
    start = 1
    while True:
        page = _get(http, url, headers, startIndex=start, count=PAGE)
        resources = page.get("Resources", []) if isinstance(page, Mapping) else None
        if not isinstance(resources, list):
            raise B2CalError(f"{url} did not answer a SCIM list (no 'Resources')")
        yield from resources
        total = int(page.get("totalResults", 0))
        start += len(resources)
        if not resources or start > total:
            return
