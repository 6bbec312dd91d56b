"""The user registry kept in step with the VO, read from servers on loopback: b2cal's JSON
member list and an INDIGO IAM-like SCIM API (its pages, its certificate DNs, its groups):
members added, changed and removed; a removed member loses access at once; a list that cannot
be read changes nothing."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from cli import assert_one_line_error, b2cal_inline

from b2cal.auth.identity import Identity
from b2cal.auth.policy import Grant, Role, role_map
from b2cal.auth.vo_source import fetch_members
from b2cal.db import users
from b2cal.db.database import StateDatabase
from b2cal.errors import B2CalError
from b2cal.processing.users import grants_for, sync_vo

ADA = "/DC=org/DC=b2cal-test/CN=Users/CN=Ada Lovelace"
BOB = "/DC=org/DC=b2cal-test/CN=Users/CN=Bob Builder"
CAROL = "/DC=org/DC=b2cal-test/CN=Users/CN=Carol Shaw"
MAPPING = role_map(
    {
        "/{vo}": "viewer",
        "/{vo}/Role=calibration": "expert",
        "/{vo}/calibration": "expert",
        "/{vo}/Role=coordinator": "coordinator",
    },
    "belle",
)


@contextmanager
def serving(answer: Any) -> Iterator[tuple[str, list[str]]]:
    """An HTTP server on loopback answering ``answer(path, query)``; its URL, and the requests."""
    asked: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            parsed = urlparse(self.path)
            status, body = answer(parsed.path, parse_qs(parsed.query), self.headers)
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", asked
    finally:
        server.shutdown()
        server.server_close()


def test_the_registry_follows_the_vos_json_member_list(state_db: StateDatabase) -> None:
    lists = [
        {
            "vo": "belle",
            "members": [
                {"dn": ADA, "name": "Ada Lovelace", "roles": ["/belle", "/belle/Role=calibration"]},
                {"dn": "CN=Bob Builder,CN=Users,DC=b2cal-test,DC=org", "roles": ["/belle"]},
            ],
        },
        {
            "vo": "belle",
            "members": [
                {"dn": ADA, "name": "Ada Lovelace", "roles": ["/belle/Role=coordinator"]},
                {"dn": CAROL, "email": "carol@kek.jp", "roles": ["/belle"]},
            ],
        },
    ]
    served = {"list": lists[0]}
    with serving(lambda path, query, headers: (200, served["list"])) as (url, _):
        first = sync_vo(state_db, fetch_members(url), MAPPING, "b2cal (sync)")
        assert (first.added, first.changed, first.removed) == ([ADA, BOB], [], [])
        assert grants_for(state_db, Identity(ADA), MAPPING) == [
            Grant(Role.VIEWER),
            Grant(Role.EXPERT),
        ]
        users.grant(state_db, BOB, [{"role": "expert", "calibrations": ["ChannelT0"]}], "/CN=Admin")
        assert Grant(Role.EXPERT, frozenset({"ChannelT0"})) in grants_for(
            state_db, Identity(BOB), MAPPING
        )
        served["list"] = lists[1]
        second = sync_vo(state_db, fetch_members(url), MAPPING, "b2cal (sync)")
    assert (second.added, second.changed, second.removed) == ([CAROL], [ADA], [BOB])
    assert grants_for(state_db, Identity(ADA), MAPPING) == [Grant(Role.COORDINATOR)]
    assert grants_for(state_db, Identity(BOB), MAPPING) == []  # gone from the VO: no access
    bob = users.user(state_db, BOB)
    assert bob is not None and not bob.in_vo and bob.extra_grants  # kept for a return
    assert users.user(state_db, CAROL).email == "carol@kek.jp"  # type: ignore[union-attr]
    # a proxy's FQANs alone do not make a stranger a member, but do give their grants
    assert grants_for(state_db, Identity(BOB, ("/belle",), "proxy"), MAPPING) == [
        Grant(Role.VIEWER)
    ]
    logged = [a for a in state_db.actions() if a.action == "sync users"]
    assert len(logged) == 2 and logged[0].detail["removed"] == [BOB]


def test_lists_that_cannot_be_read_change_nothing(state_db: StateDatabase) -> None:
    answers = {
        "/broken": (200, b"not json"),
        "/forbidden": (403, {"detail": "no"}),
        "/nodn": (200, {"members": [{"name": "Nobody"}]}),
        "/notalist": (200, {"vo": "belle"}),
    }
    with serving(lambda path, query, headers: answers[path]) as (url, _):
        for path, why in (
            ("/broken", "is not JSON"),
            ("/forbidden", "HTTP 403"),
            ("/nodn", "member 0 has no 'dn'"),
            ("/notalist", "'members' list"),
        ):
            with pytest.raises(B2CalError, match=why):
                fetch_members(url + path)
    with pytest.raises(B2CalError, match="cannot be reached"):
        fetch_members("http://127.0.0.1:9/members")
    assert users.users(state_db) == []


def test_an_iam_scim_api_is_read_page_by_page(state_db: StateDatabase) -> None:
    """IAM's users: certificates in its own SCIM extension, groups by path; suspended users are
    no members. The server pages two at a time, whatever was asked."""

    def record(name: str, dn: str | None, groups: list[str], active: bool = True) -> Any:
        extension = {"certificates": [{"subjectDn": dn, "primary": True}]} if dn else {}
        return {
            "userName": name.split()[0].lower(),
            "name": {"formatted": name},
            "active": active,
            "emails": [{"value": f"{name.split()[0].lower()}@iam.test", "primary": True}],
            "groups": [{"display": g} for g in groups],
            "urn:indigo-dc:scim:schemas:IndigoUser": extension,
        }

    everyone = [
        record(
            "Ada Lovelace",
            "CN=Ada Lovelace,CN=Users,DC=b2cal-test,DC=org",
            ["belle", "belle/calibration"],
        ),
        record("Bob Builder", BOB, ["belle"], active=False),
        record("Dan Nocert", None, ["belle"]),
        record("Carol Shaw", CAROL, ["belle"]),
    ]

    def answer(path: str, query: dict[str, list[str]], headers: Any) -> tuple[int, Any]:
        if headers.get("Authorization") != "Bearer scim-token":
            return 401, {"detail": "unauthorized"}
        assert path == "/iam/scim/Users"
        start = int(query["startIndex"][0])
        page = everyone[start - 1 : start + 1]
        return 200, {
            "totalResults": len(everyone),
            "itemsPerPage": len(page),
            "startIndex": start,
            "Resources": page,
        }

    with serving(answer) as (url, asked):
        with pytest.raises(B2CalError, match="HTTP 401"):
            fetch_members(url + "/iam", "scim")
        members = fetch_members(url + "/iam", "scim", token="scim-token")
    assert [m.dn for m in members] == [ADA, CAROL]
    assert members[0].roles == ("/belle", "/belle/calibration")
    assert len([a for a in asked if "startIndex" in a]) == 3  # pages from 1, 3, and the 401
    report = sync_vo(state_db, members, MAPPING, "b2cal (sync)")
    assert report.added == [ADA, CAROL]
    assert grants_for(state_db, Identity(ADA), MAPPING) == [Grant(Role.VIEWER), Grant(Role.EXPERT)]


@pytest.mark.unit  # no server: refusals, rules, files
def test_the_users_commands(tmp_path: Path) -> None:
    members = {"vo": "belle", "members": [{"dn": ADA, "roles": ["/belle/Role=calibration"]}]}
    env = {"B2CAL_HOME": str(tmp_path)}
    with serving(lambda path, query, headers: (200, members)) as (url, _):
        synced = b2cal_inline("users", "sync", "--url", url, env=env)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert "1 members: 1 added, 0 changed, 0 removed" in synced.stdout
    granted = b2cal_inline("users", "grant", ADA, "expert:ChannelT0", env=env)
    assert granted.returncode == 0, granted.stderr
    assert f"{ADA}: expert of ChannelT0" in granted.stdout.replace("\n", "")  # not just "expert"
    listed = json.loads(b2cal_inline("users", "list", "--json", env=env).stdout)
    assert listed[0]["dn"] == ADA and listed[0]["grants"] == [
        {"role": "expert", "calibrations": []},
        {"role": "expert", "calibrations": ["ChannelT0"]},
    ]
    assert_one_line_error(
        b2cal_inline("users", "grant", ADA, "wizard", env=env), "'wizard' is not a role"
    )
    assert_one_line_error(
        b2cal_inline("users", "sync", "--url", "http://127.0.0.1:9/x", env=env), "cannot be reached"
    )
