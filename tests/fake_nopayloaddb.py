"""A fake nopayloaddb REST server, so the tests of b2cal's nopayloaddb client run anywhere.

Why a fake: nopayloaddb is not a package (it is a Django project run from its repository) and
this project ships only its own code, so CI cannot run the real server. This module is b2cal's
own model of the server's behaviour, written from what a real server (nopayloaddb snapshot of
2026-07, Django 4.2, PostgreSQL 15, ``CDB_IOV_MODE=continuous``) was seen to do on loopback, bugs
included:

* paths are exact: ``payloadiovs/`` needs its trailing slash (without it a GET is redirected,
  HTTP 301), every other path must not have one (HTML 404);
* unhandled server errors are HTML pages with HTTP 500, and roll the request back: a missing
  status, payload type, payload list, payload IoV or global tag given by name; inserting an
  IoV before existing ones of an unlocked tag; an IoV whose end falls in the same major as
  the end of the IoV it is inserted into; appending after an earlier IoV of a locked tag
  (unless both are open-ended: then the earlier one stays open-ended);
* refusals the server does handle are JSON ``{"detail": ...}`` with HTTP 500 (frozen tag,
  locked conflicts, bad IoV range), or field messages with HTTP 400 (duplicate names, a blank
  checksum);
* on an unlocked tag (or a payload list of no tag), attaching an IoV drops the IoVs it
  covers, trims the IoV it starts in, and splits that IoV in two if it ends inside it;
* the lookup ``payloadiovs/`` answers, per payload type, the IoV with the latest start at or
  before the point, whatever its end;
* ``bulk_piov`` stores IoVs without checksum and end and checks nothing;
* ``pl_attach`` replaces the tag's list of that payload type, except on a locked tag;
* with a JWT secret, writes without a valid HS256 bearer token get HTTP 403; reads are open.

``rest_store(tmp_path)`` yields a :class:`RestStore` on a fresh fake server. With
``B2CAL_TEST_NOPAYLOADDB_URL`` set, it uses that real server instead (and the token in
``B2CAL_TEST_NOPAYLOADDB_TOKEN``, if any) and deletes every global tag on it first: point it
at a throwaway server only.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import os
import re
import socketserver
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from b2cal.cdb.nopayloaddb.mapping import OPEN_END
from b2cal.cdb.nopayloaddb.rest import NopayloaddbApi
from b2cal.cdb.nopayloaddb.store import RestStore
from b2cal.errors import NopayloaddbError

REAL_SERVER_ENV = "B2CAL_TEST_NOPAYLOADDB_URL"
REAL_TOKEN_ENV = "B2CAL_TEST_NOPAYLOADDB_TOKEN"
STATUSES = ("unlocked", "locked", "frozen")

_ERROR_PAGE = (
    '\n<!doctype html>\n<html lang="en">\n<head>\n  <title>Server Error (500)</title>\n'
    "</head>\n<body>\n  <h1>Server Error (500)</h1><p></p>\n</body>\n</html>\n"
)
_NOT_FOUND_PAGE = (
    '\n<!doctype html>\n<html lang="en">\n<head>\n  <title>Not Found</title>\n</head>\n'
    "<body>\n  <h1>Not Found</h1><p>The requested resource was not found on this server.</p>\n"
    "</body>\n</html>\n"
)


class ServerCrash(Exception):
    """An exception the real server does not handle: HTML 500, the request rolled back."""


class Refused(Exception):
    """A refusal the real server answers in JSON."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(status, body)
        self.status = status
        self.body = body


def _now() -> str:
    """Naive UTC, as the server (Django with USE_TZ off) sends times."""
    return datetime.now(UTC).replace(tzinfo=None).isoformat()


@dataclass
class _Iov:
    id: int
    url: str
    checksum: str
    start: tuple[int, int]
    end: tuple[int, int]
    plist: str | None = None
    inserted: str = field(default_factory=_now)

    def json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "payload_url": self.url,
            "checksum": self.checksum,
            "major_iov": self.start[0],
            "minor_iov": self.start[1],
            "comb_iov": f"{self.start[0]}.{self.start[1]:019d}",
            "major_iov_end": self.end[0],
            "minor_iov_end": self.end[1],
            "payload_list": self.plist,
            "inserted": self.inserted,
        }

    @property
    def open_ended(self) -> bool:
        return self.end[0] in (0, OPEN_END) and self.end[1] == OPEN_END


@dataclass
class _List:
    id: int
    name: str
    ptype: str
    tag: str | None = None
    created: str = field(default_factory=_now)

    def json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "global_tag": self.tag,
            "payload_type": self.ptype,
            "created": self.created,
        }


@dataclass
class _Tag:
    id: int
    name: str
    author: str | None
    status: str
    created: str = field(default_factory=_now)
    updated: str = field(default_factory=_now)


@dataclass
class _State:
    statuses: dict[str, dict[str, Any]] = field(default_factory=dict)
    tags: dict[str, _Tag] = field(default_factory=dict)
    types: dict[str, dict[str, Any]] = field(default_factory=dict)
    lists: dict[str, _List] = field(default_factory=dict)
    iovs: dict[int, _Iov] = field(default_factory=dict)
    ids: dict[str, int] = field(default_factory=dict)

    def next_id(self, kind: str) -> int:
        self.ids[kind] = self.ids.get(kind, 0) + 1
        return self.ids[kind]


Handler = Callable[..., Any]


class FakeNopayloaddb:
    """The server's state and API as a WSGI application (see the module doc for what it does)."""

    def __init__(
        self,
        jwt_secret: str | None = None,
        statuses: tuple[str, ...] = STATUSES,
        settings: dict[str, str] | None = None,
    ):
        self.jwt_secret = jwt_secret
        #: The server's ``CDB_*`` environment variables, as ``user_settings/`` shows them.
        self.settings = dict(settings or {})
        self.state = _State()
        for name in statuses:
            self.state.statuses[name] = {"id": self.state.next_id("status"), "name": name}
        self.lock = threading.Lock()
        #: Every request as (method, path, Authorization header or None), for the tests.
        self.requests: list[tuple[str, str, str | None]] = []
        self.url = ""
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = [
            (method, re.compile(pattern), handler)
            for method, pattern, handler in [
                ("GET", r"globalTags", self._list_tags),
                ("GET", r"gt", self._list_tags_nested),
                ("POST", r"gt", self._create_tag),
                ("GET", r"globalTag/([^/]+)", self._get_tag),
                ("GET", r"gtPayloadLists/([^/]+)", self._tag_lists),
                ("PUT", r"gt_change_status/([^/]+)/([^/]+)", self._change_status),
                ("POST", r"cloneGlobalTag/([^/]+)/([^/]+)", self._clone),
                ("DELETE", r"deleteGlobalTag/([^/]+)", self._delete_tag),
                ("GET", r"gtstatus", self._list_statuses),
                ("POST", r"gtstatus", self._create_status),
                ("GET", r"pt", self._list_types),
                ("POST", r"pt", self._create_type),
                ("POST", r"pl", self._create_list),
                ("PUT", r"pl_attach", self._attach_list),
                ("GET", r"piov", self._list_iovs),
                ("POST", r"piov", self._create_iov),
                ("POST", r"bulk_piov", self._bulk_iovs),
                ("PUT", r"piov_attach", self._attach_iov),
                ("GET", r"payloadiovs/", self._lookup),
                ("GET", r"user_settings/([^/]+)/", self._setting),
            ]
        ]

    # --- WSGI --------------------------------------------------------------------------------
    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        method = environ["REQUEST_METHOD"]
        path = environ.get("PATH_INFO", "")
        auth = environ.get("HTTP_AUTHORIZATION")
        self.requests.append((method, path, auth))
        length = int(environ.get("CONTENT_LENGTH") or 0)
        raw = environ["wsgi.input"].read(length) if length else b""
        query = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
        status, headers, body = self.handle(method, path, query, raw, auth)
        start_response(status, headers)
        return [body]

    def handle(
        self, method: str, path: str, query: dict[str, str], raw: bytes, auth: str | None
    ) -> tuple[str, list[tuple[str, str]], bytes]:
        prefix = "/api/cdb_rest/"
        if not path.startswith(prefix):
            return _html("404 Not Found", _NOT_FOUND_PAGE)
        rest = path[len(prefix) :]
        found = self._route(method, rest)
        if found is None:
            if method == "GET" and self._route(method, rest + "/"):
                # Django's APPEND_SLASH: a GET missing a route's trailing slash is redirected.
                headers = [("Location", f"{prefix}{rest}/"), ("Content-Length", "0")]
                return "301 Moved Permanently", headers, b""
            return _html("404 Not Found", _NOT_FOUND_PAGE)
        handler, match = found
        if method != "GET" and (refusal := self._unauthorised(auth)):
            return _json(403, {"detail": refusal})
        args = [unquote(group) for group in match.groups()]
        with self.lock:
            saved = copy.deepcopy(self.state)
            try:
                # Every handler takes the path's parts, then the query (GET) or the body.
                answer = handler(*args, query if method == "GET" else json.loads(raw or b"{}"))
            except Refused as refused:
                self.state = saved
                return _json(refused.status, refused.body)
            except (ServerCrash, KeyError, TypeError, ValueError):
                self.state = saved
                return _html("500 Internal Server Error", _ERROR_PAGE)
        if answer is None:  # bulk_piov answers an empty body without a content type
            return "200 OK", [("Content-Length", "0")], b""
        return _json(200, answer)

    def _route(self, method: str, path: str) -> tuple[Handler, re.Match[str]] | None:
        for route_method, pattern, handler in self._routes:
            match = pattern.fullmatch(path)
            if match is not None and route_method == method:
                return handler, match
        return None

    def _unauthorised(self, auth: str | None) -> str | None:
        """What the server's JWT authentication says about a write, or None if it passes."""
        if self.jwt_secret is None:
            return None
        if not auth:
            return "Authentication credentials were not provided"
        parts = auth.split(" ")
        if len(parts) != 2 or parts[0] != "Bearer":
            return "Wrong access_token format"
        if not verify_hs256(self.jwt_secret, parts[1]):
            return "invalid signature"
        return None

    # --- lookups of named things (a missing one is an unhandled error on the server) ----------
    def _tag(self, name: str) -> _Tag:
        if name not in self.state.tags:
            raise ServerCrash(f"GlobalTag {name} does not exist")
        return self.state.tags[name]

    def _list(self, name: str) -> _List:
        if name not in self.state.lists:
            raise ServerCrash(f"PayloadList {name} does not exist")
        return self.state.lists[name]

    def _members(self, plist: str) -> list[_Iov]:
        return [i for i in self.state.iovs.values() if i.plist == plist]

    def _tag_lists_of(self, tag: str) -> list[_List]:
        return [pl for pl in self.state.lists.values() if pl.tag == tag]

    # --- global tags -----------------------------------------------------------------------
    def _tag_summary(self, tag: _Tag) -> dict[str, Any]:
        lists = self._tag_lists_of(tag.name)
        return {
            "id": tag.id,
            "name": tag.name,
            "author": tag.author,
            "status": tag.status,
            "payload_lists_count": len(lists),
            "payload_iov_count": sum(len(self._members(pl.name)) for pl in lists),
            "created": tag.created,
            "updated": tag.updated,
        }

    def _tag_nested(self, tag: _Tag) -> dict[str, Any]:
        status = self.state.statuses[tag.status]
        lists = [
            {**pl.json(), "payload_iov": [i.json() for i in self._members(pl.name)]}
            for pl in self._tag_lists_of(tag.name)
        ]
        return {
            "id": tag.id,
            "name": tag.name,
            "author": tag.author,
            "status": {**status, "description": None},
            "payload_lists": lists,
            "created": tag.created,
            "updated": tag.updated,
        }

    def _short(self, tag: _Tag, status: Any) -> dict[str, Any]:
        return {
            "id": tag.id,
            "name": tag.name,
            "author": tag.author,
            "status": status,
            "created": tag.created,
            "updated": tag.updated,
        }

    def _list_tags(self, query: dict[str, str]) -> Any:
        return [self._tag_summary(t) for t in self.state.tags.values()]

    def _list_tags_nested(self, query: dict[str, str]) -> Any:
        return [self._tag_nested(t) for t in self.state.tags.values()]

    def _get_tag(self, name: str, query: dict[str, str]) -> Any:
        if name not in self.state.tags:
            raise Refused(404, {"detail": "Not found."})
        tag = self.state.tags[name]
        return self._tag_summary(tag) if "light" in query else self._tag_nested(tag)

    def _tag_lists(self, name: str, query: dict[str, str]) -> Any:
        return {pl.ptype: pl.name for pl in self._tag_lists_of(name)}

    def _create_tag(self, body: dict[str, Any]) -> Any:
        if "status" not in body:
            raise Refused(500, {"detail": "GlobalTagStatus not found."})
        if body["status"] not in self.state.statuses:
            raise ServerCrash("GlobalTagStatus matching query does not exist")
        if body["name"] in self.state.tags:
            raise Refused(400, {"name": ["global tag with this name already exists."]})
        tag = _Tag(self.state.next_id("tag"), body["name"], body.get("author"), body["status"])
        self.state.tags[tag.name] = tag
        return self._short(tag, tag.status)

    def _change_status(self, name: str, status: str, body: Any) -> Any:
        tag = self._tag(name)
        if status not in self.state.statuses:
            raise ServerCrash("GlobalTagStatus matching query does not exist")
        tag.status = status
        tag.updated = _now()
        return self._short(tag, self.state.statuses[status]["id"])

    def _clone(self, source: str, target: str, body: Any) -> Any:
        original = self._tag(source)
        if target in self.state.tags:
            raise Refused(400, {"name": ["global tag with this name already exists."]})
        clone = _Tag(self.state.next_id("tag"), target, original.author, "unlocked")
        self.state.tags[target] = clone
        for plist in self._tag_lists_of(source):
            number = self.state.next_id("list")
            new = _List(number, f"{plist.ptype}_{number}", plist.ptype, target)
            self.state.lists[new.name] = new
            for iov in self._members(plist.name):
                number = self.state.next_id("iov")
                self.state.iovs[number] = _Iov(
                    number, iov.url, iov.checksum, iov.start, iov.end, new.name, iov.inserted
                )
        return self._tag_summary(clone)

    def _delete_tag(self, name: str, body: Any) -> Any:
        tag = self.state.tags.get(name)
        if tag is None:
            raise Refused(500, {"detail": f"GlobalTag {name} doesn't exist"})
        if tag.status in ("locked", "frozen"):
            raise Refused(500, {"detail": f"Global Tag is {tag.status}."})
        for plist in self._tag_lists_of(name):
            del self.state.lists[plist.name]
            for iov in self._members(plist.name):
                del self.state.iovs[iov.id]
        del self.state.tags[name]
        return {"detail": f"Global tag {name} deleted."}

    def _list_statuses(self, query: dict[str, str]) -> Any:
        return list(self.state.statuses.values())

    def _create_status(self, body: dict[str, Any]) -> Any:
        if body["name"] in self.state.statuses:
            raise Refused(400, {"name": ["global tag status with this name already exists."]})
        status = {"id": self.state.next_id("status"), "name": body["name"], "created": _now()}
        self.state.statuses[body["name"]] = status
        return status

    # --- payload types and lists -------------------------------------------------------------
    def _list_types(self, query: dict[str, str]) -> Any:
        return list(self.state.types.values())

    def _create_type(self, body: dict[str, Any]) -> Any:
        if body["name"] in self.state.types:
            raise Refused(400, {"name": ["payload type with this name already exists."]})
        ptype = {"id": self.state.next_id("type"), "name": body["name"], "created": _now()}
        self.state.types[body["name"]] = ptype
        return ptype

    def _create_list(self, body: dict[str, Any]) -> Any:
        if body["payload_type"] not in self.state.types:
            raise ServerCrash("PayloadType matching query does not exist")
        number = self.state.next_id("list")
        plist = _List(number, f"{body['payload_type']}_{number}", body["payload_type"])
        self.state.lists[plist.name] = plist
        return plist.json()

    def _attach_list(self, body: dict[str, Any]) -> Any:
        plist = self._list(body["payload_list"])
        tag = self._tag(body["global_tag"])
        if tag.status == "frozen":
            raise Refused(500, {"detail": "Global Tag is frozen."})
        current = [pl for pl in self._tag_lists_of(tag.name) if pl.ptype == plist.ptype]
        if current and tag.status == "locked":
            raise Refused(
                500,
                {
                    "detail": f"Payload List of type {plist.ptype} already attached and Global "
                    "Tag is locked."
                },
            )
        for old in current:
            old.tag = None
        plist.tag = tag.name
        return plist.json()

    # --- payload IoVs ----------------------------------------------------------------------
    def _list_iovs(self, query: dict[str, str]) -> Any:
        return [i.json() for i in self.state.iovs.values()]

    def _create_iov(self, body: dict[str, Any]) -> Any:
        if not body.get("checksum"):
            raise Refused(400, {"checksum": ["This field may not be blank."]})
        start = (int(body["major_iov"]), int(body["minor_iov"]))
        end = (int(body.get("major_iov_end", OPEN_END)), int(body.get("minor_iov_end", OPEN_END)))
        if end <= start:  # continuous mode: an IoV must not be empty
            raise Refused(
                500,
                {
                    "detail": f"{body['payload_url']} PayloadIOV ending IOVs should be greater "
                    "or equal than starting."
                },
            )
        iov = _Iov(self.state.next_id("iov"), body["payload_url"], body["checksum"], start, end)
        self.state.iovs[iov.id] = iov
        return iov.json()

    def _bulk_iovs(self, body: list[dict[str, Any]]) -> None:
        for item in body:
            self._list(item["payload_list"])
            number = self.state.next_id("iov")
            self.state.iovs[number] = _Iov(
                number,
                item["payload_url"],
                "",  # dropped, as the real endpoint does
                (int(item["major_iov"]), int(item["minor_iov"])),
                (OPEN_END, OPEN_END),  # dropped too
                item["payload_list"],
            )

    def _attach_iov(self, body: dict[str, Any]) -> Any:
        plist = self._list(body["payload_list"])
        if int(body["piov_id"]) not in self.state.iovs:
            raise ServerCrash("PayloadIOV matching query does not exist")
        new = self.state.iovs[int(body["piov_id"])]
        status = self._tag(plist.tag).status if plist.tag else None
        if status == "frozen":
            raise Refused(500, {"detail": "Global Tag is frozen."})
        members = [i for i in self._members(plist.name) if i.id != new.id]
        if status == "locked":
            self._append_locked(members, new)
        else:
            self._insert_unlocked(members, new)
        new.plist = plist.name
        return new.json()

    @staticmethod
    def _conflict(new: _Iov, old: _Iov) -> Refused:
        return Refused(
            500,
            {
                "detail": "GT is LOCKED. You are attempting to insert IOV (major_iov,minor_iov,"
                f"major_iov_end, minor_iov_end) ({new.start[0]},{new.start[1]},{new.end[0]},"
                f"{new.end[1]}). Conflicts with existing IOV {old.url} ({old.start[0]},"
                f"{old.start[1]},{old.end[0]},{old.end[1]})"
            },
        )

    def _append_locked(self, members: list[_Iov], new: _Iov) -> None:
        """A locked tag: only an open IoV after an open last one, or an IoV before all others."""
        same = [i for i in members if i.start == new.start]
        if same:
            raise self._conflict(new, same[0])
        last = max(members, key=lambda i: i.start, default=None)
        if new.open_ended and last is not None and last.open_ended and last.start < new.start:
            return  # accepted; the last IoV stays open-ended as well
        if any(i.start < new.start for i in members):
            raise ServerCrash("the locked-tag check of an earlier IoV fails")
        later = min(
            (i for i in members if i.start > new.start), key=lambda i: i.start, default=None
        )
        if later is not None:
            if new.end[0] > later.start[0] or (
                new.end[0] == later.start[0] and new.end[1] > later.start[1]
            ):
                raise self._conflict(new, later)
            if new.end[0] == later.start[0]:
                raise ServerCrash("the locked-tag check of a later IoV fails")

    def _insert_unlocked(self, members: list[_Iov], new: _Iov) -> None:
        """An unlocked tag (or a list of no tag): cover, trim, split — and two crashes."""
        for iov in members:
            if iov.start >= new.start and iov.end <= new.end:
                iov.plist = None
        members = [i for i in members if i.plist is not None]
        before = max(
            (i for i in members if i.start <= new.start), key=lambda i: i.start, default=None
        )
        old_end = before.end if before is not None else None
        if before is not None and old_end is not None:
            if old_end > new.start:
                before.end = new.start
            if new.end < old_end:
                number = self.state.next_id("iov")
                piece = _Iov(number, before.url, before.checksum, new.end, old_end, before.plist)
                self.state.iovs[number] = piece
                members.append(piece)
        later = min(
            (i for i in members if i.start > new.start), key=lambda i: i.start, default=None
        )
        if later is None:
            return
        if old_end is None:
            raise ServerCrash("an IoV inserted before all others reads an unset variable")
        if new.end[0] > old_end[0] or (new.end[0] == old_end[0] and new.end[1] > old_end[1]):
            later.start = new.end
        elif new.end[0] == old_end[0]:
            raise ServerCrash("the comparison with the next IoV reads an undefined name")

    def _setting(self, name: str, query: dict[str, str]) -> Any:
        if name not in self.settings:
            raise Refused(404, {"detail": f"Setting '{name}' not found."})
        return {name: self.settings[name]}

    def _lookup(self, query: dict[str, str]) -> Any:
        """Per payload type, the IoV with the latest start at or before the point (no end check)."""
        point = (int(query["majorIOV"]), int(query["minorIOV"]))
        rows = []
        for plist in self._tag_lists_of(query.get("gtName", "")):
            found = max(
                (i for i in self._members(plist.name) if i.start <= point),
                key=lambda i: i.start,
                default=None,
            )
            if found is None:
                continue
            row = {
                "payload_type_name": plist.ptype,
                "payload_url": found.url,
                "checksum": found.checksum,
                "size": None,
                "major_iov": found.start[0],
                "minor_iov": found.start[1],
                "major_iov_end": found.end[0],
                "minor_iov_end": found.end[1],
                "revision": None,
            }
            rows.append(row if query.get("shape") == "dict" else list(row.values()))
        return rows


def _json(status: int, body: Any) -> tuple[str, list[tuple[str, str]], bytes]:
    data = json.dumps(body).encode()
    return (
        f"{status} {HTTPStatus(status).phrase}",
        [("Content-Type", "application/json"), ("Content-Length", str(len(data)))],
        data,
    )


def _html(status: str, page: str) -> tuple[str, list[tuple[str, str]], bytes]:
    data = page.encode()
    headers = [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(data)))]
    return status, headers, data


# --- JWT (HS256), as the server's optional authentication checks it ----------------------------
def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_token(secret: str, claims: dict[str, Any] | None = None) -> str:
    """A JWT signed with ``secret`` (what a site's token service would hand out)."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps(claims or {"sub": "b2cal-tests"}).encode())
    signature = hmac.new(secret.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{_b64(signature)}"


def verify_hs256(secret: str, token: str) -> bool:
    parts = token.split(".")
    if len(parts) != 3:
        return False
    expected = hmac.new(secret.encode(), f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256)
    return hmac.compare_digest(_b64(expected.digest()), parts[2])


# --- serving it --------------------------------------------------------------------------------
class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def running_fake(**options: Any) -> Iterator[FakeNopayloaddb]:
    """A fake server on a free loopback port, in a thread; ``fake.url`` is its root URL."""
    fake = FakeNopayloaddb(**options)
    server = make_server(
        "127.0.0.1", 0, fake, server_class=_ThreadingServer, handler_class=_QuietHandler
    )
    # shutdown() waits for serve_forever's next poll: 0.5 s by default, per server started
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def wipe_real_server(url: str, token: str | None) -> None:
    """Make a real (throwaway!) server empty for a test: every global tag is deleted."""
    api = NopayloaddbApi(url, token=token)
    try:
        for status in STATUSES:
            try:
                api.post("gtstatus", {"name": status})
            except NopayloaddbError as exc:
                if exc.status != 400:
                    raise
        for tag in api.get("globalTags"):
            api.put(f"gt_change_status/{tag['name']}/unlocked")
            api.delete(f"deleteGlobalTag/{tag['name']}")
    finally:
        api.close()


def server_token() -> str | None:
    """The token for the server :func:`server_url` gives: the real one's, none for the fake."""
    return os.environ.get(REAL_TOKEN_ENV) if os.environ.get(REAL_SERVER_ENV) else None


@contextmanager
def server_url() -> Iterator[str]:
    """The root URL of an empty nopayloaddb: a fresh fake, or the real one named in the env."""
    real = os.environ.get(REAL_SERVER_ENV)
    if real:
        wipe_real_server(real, os.environ.get(REAL_TOKEN_ENV))
        yield real
        return
    with running_fake() as fake:
        yield fake.url


@contextmanager
def rest_store(tmp_path: Path, **options: Any) -> Iterator[RestStore]:
    """A RestStore on an empty server (see :func:`server_url`), payload files under tmp_path."""
    with server_url() as url:
        options.setdefault("token", server_token())
        options.setdefault("payloads", tmp_path / "nopayloaddb-payloads")
        with RestStore(url, **options) as store:
            yield store
