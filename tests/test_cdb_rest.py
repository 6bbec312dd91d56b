"""What is particular to b2cal's nopayloaddb client (``b2cal.cdb.nopayloaddb``).

The behaviour every store shares is in ``test_cdb_store.py`` (kind "nopayloaddb"). Here: the
mapping of IoVs and states, one-line errors, the bearer token, the workarounds of the server's
bugs, crash safety of multi-request writes, the payload directory — and a set of checks that the
fake server (``fake_nopayloaddb.py``) behaves like the real one. Everything runs on the fake;
with ``B2CAL_TEST_NOPAYLOADDB_URL`` set, everything that needs no look inside the fake runs on
that real server instead.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cli import assert_one_line_error, b2cal_inline
from fake_nopayloaddb import (
    REAL_TOKEN_ENV,
    hs256_token,
    rest_store,
    running_fake,
    server_token,
    server_url,
)
from hypothesis import given
from hypothesis import strategies as st

from b2cal.cdb.model import TagState
from b2cal.cdb.nopayloaddb.mapping import (
    OPEN_END,
    STATE_TAG,
    STATUS_OF,
    ServerIoV,
    StateRecord,
    exact_state,
    iov_from_server,
    iov_to_server,
    state_type,
)
from b2cal.cdb.nopayloaddb.rest import NopayloaddbApi, api_root
from b2cal.cdb.nopayloaddb.store import RestStore
from b2cal.cdb.operations import promote, upload
from b2cal.cdb.store import NewPayloadIoV
from b2cal.core.files import md5sum
from b2cal.core.iov import END_OF_EXP, ExpRun, IoV, tile_iovs
from b2cal.core.localdb import write_local_database
from b2cal.errors import (
    CdbError,
    ChecksumMismatch,
    ForbiddenChange,
    NopayloaddbError,
    NoPayloadValid,
    UnknownPayload,
    UnknownTag,
)

pytestmark = pytest.mark.unit

OPEN, RUNNING = TagState.OPEN, TagState.RUNNING


def new(name: str, data: str, where: str, **provenance: Any) -> NewPayloadIoV:
    return NewPayloadIoV(name, data.encode(), IoV.parse(where), provenance)


def client(url: str, payloads: Path, **options: Any) -> RestStore:
    """Another client of the test server (with the real server's token, if it wants one)."""
    return RestStore(url, token=server_token(), payloads=payloads, **options)


def placed(store: RestStore, tag: str, name: str | None = None) -> list[tuple[str, int, str]]:
    return [(e.name, e.payload.revision, str(e.iov)) for e in store.iovs(tag, name)]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RestStore]:
    """A client of an empty server (fake, or the real one named in the environment)."""
    with rest_store(tmp_path) as opened:
        yield opened


# --- the mapping --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("iov", "server"),
    [
        ("1,0,1,9", (1, 0, 1, 10)),
        ("1,5,3,0", (1, 5, 3, 1)),
        ("1,0,1,-1", (1, 0, 2, 0)),
        ("0,0,-1,-1", (0, 0, None, None)),
        (f"2,0,2,{END_OF_EXP}", (2, 0, 2, END_OF_EXP + 1)),
    ],
)
def test_iov_mapping_examples(iov: str, server: tuple[int, int, int | None, int | None]) -> None:
    assert iov_to_server(IoV.parse(iov)) == server
    assert iov_from_server(*server) == IoV.parse(iov)


def test_the_servers_open_end_reads_as_open_ended() -> None:
    assert iov_from_server(4, 2, OPEN_END, OPEN_END) == IoV(4, 2, -1, -1)
    with pytest.raises(CdbError, match="ends before it starts"):
        iov_from_server(4, 2, 4, 2)


@st.composite
def iovs(draw: st.DrawFn) -> IoV:
    """IoVs with every kind of upper end, around experiment and run boundaries."""
    runs = st.one_of(st.integers(0, 20), st.integers(END_OF_EXP - 2, END_OF_EXP))
    exp_low, run_low = draw(st.integers(0, 5)), draw(runs)
    kind = draw(st.sampled_from(["open", "end of experiment", "run"]))
    if kind == "open":
        return IoV(exp_low, run_low, -1, -1)
    exp_high = draw(st.integers(exp_low, 6))
    if kind == "end of experiment":
        return IoV(exp_low, run_low, exp_high, -1)
    low = run_low if exp_high == exp_low else 0
    return IoV(exp_low, run_low, exp_high, draw(st.integers(low, END_OF_EXP)))


points = st.builds(
    ExpRun,
    st.integers(0, 7),
    st.one_of(st.integers(0, 25), st.integers(END_OF_EXP - 3, END_OF_EXP)),
)


@given(iovs())
def test_iov_mapping_round_trips(iov: IoV) -> None:
    server = iov_to_server(iov)
    assert iov_from_server(*server) == iov
    if server.major_end is not None:
        assert server.end > (server.major, server.minor)  # never empty: the server refuses those


@given(iovs(), points)
def test_mapped_iovs_hold_the_same_runs(iov: IoV, point: ExpRun) -> None:
    assert iov_to_server(iov).contains(point) == iov.contains(point)


@given(
    st.lists(points, min_size=1, max_size=5, unique=True).map(sorted),
    st.booleans(),
)
def test_tiling_iovs_map_to_ends_that_are_the_next_starts(
    starts: list[ExpRun], open_: bool
) -> None:
    tiled = [iov_to_server(i) for i in tile_iovs(starts, starts[-1], open_ended=open_)]
    for a, b in itertools.pairwise(tiled):
        assert a.end == (b.major, b.minor)


@pytest.mark.parametrize(
    ("status", "record", "expected"),
    [
        ("unlocked", None, TagState.OPEN),
        ("locked", None, TagState.RUNNING),
        ("frozen", None, TagState.PUBLISHED),
        ("something else", None, TagState.PUBLISHED),
        ("frozen", ("OPEN", "TESTING"), TagState.TESTING),
        ("unlocked", ("OPEN", "TESTING"), TagState.OPEN),  # the status change did not happen
        ("frozen", ("TESTING", "VALIDATED"), TagState.VALIDATED),
        ("frozen", ("VALIDATED", "OPEN"), TagState.VALIDATED),
        ("unlocked", ("VALIDATED", "OPEN"), TagState.OPEN),
        ("unlocked", ("OPEN", "RUNNING"), TagState.RUNNING),  # unlocked for an append
        ("locked", ("RUNNING", "INVALID"), TagState.RUNNING),
        ("frozen", ("RUNNING", "INVALID"), TagState.INVALID),
        ("locked", ("OPEN", "TESTING"), TagState.RUNNING),  # changed by another tool
    ],
)
def test_exact_state_from_status_and_record(
    status: str, record: tuple[str, str] | None, expected: TagState
) -> None:
    kept = StateRecord(TagState(record[0]), TagState(record[1])) if record else None
    assert exact_state(status, kept) is expected
    if kept is not None:  # as kept on the server: "<from>><to>", description as JSON
        assert StateRecord.parse(kept.url, '"d"', 3) == StateRecord(kept.before, kept.after, "d", 3)


def test_state_records_of_long_tag_names_fit_the_server() -> None:
    assert state_type("gt") == "b2cal.state.gt"
    assert len(state_type("x" * 80)) <= 80
    assert StateRecord.parse("not a record", '""', 1) is None


@pytest.mark.parametrize(
    ("given_url", "root"),
    [
        ("http://h:8000", "http://h:8000/api/cdb_rest/"),
        ("http://h:8000/", "http://h:8000/api/cdb_rest/"),
        ("https://h/api/cdb_rest", "https://h/api/cdb_rest/"),
        ("https://h/cdb/api/cdb_rest/", "https://h/cdb/api/cdb_rest/"),
        ("https://h/prefix", "https://h/prefix/api/cdb_rest/"),
    ],
)
def test_base_url_may_be_the_server_or_its_api(given_url: str, root: str) -> None:
    assert api_root(given_url) == root


def test_a_non_http_url_is_refused() -> None:
    with pytest.raises(CdbError, match="not a nopayloaddb URL"):
        RestStore("postgresql://host/db")


# --- errors: one line, naming the request and the status -------------------------------------
def mocked(handler: Callable[[httpx.Request], httpx.Response], tmp_path: Path) -> RestStore:
    return RestStore("http://cdb.test", transport=httpx.MockTransport(handler), payloads=tmp_path)


def assert_one_line(error: BaseException, *fragments: str) -> None:
    message = str(error)
    assert "\n" not in message and "<" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_an_html_error_page_is_one_line(tmp_path: Path) -> None:
    page = "<!doctype html>\n<html><h1>Server Error (500)</h1></html>\n"
    store = mocked(lambda r: httpx.Response(500, html=page), tmp_path)
    with pytest.raises(NopayloaddbError) as raised:
        store.tag("gt")
    assert_one_line(raised.value, "GET globalTag/gt", "HTTP 500", "error page, not JSON")
    assert raised.value.status == 500


def test_a_json_refusal_gives_its_detail_in_one_line(tmp_path: Path) -> None:
    detail = {"detail": "GT is LOCKED.\nConflicts with existing IOV"}
    store = mocked(lambda r: httpx.Response(500, json=detail), tmp_path)
    with pytest.raises(CdbError) as raised:
        store.api.put("piov_attach", {"payload_list": "A_1", "piov_id": 1})
    assert_one_line(raised.value, "PUT piov_attach", "HTTP 500", "GT is LOCKED. Conflicts")


def test_field_errors_redirects_and_non_json_answers_are_one_line(tmp_path: Path) -> None:
    answers = {
        "pt": httpx.Response(400, json={"name": ["payload type with this name already exists."]}),
        "payloadiovs": httpx.Response(301, headers={"Location": "/api/cdb_rest/payloadiovs/"}),
        "gt": httpx.Response(200, html="<html>Sign in</html>"),
    }
    store = mocked(lambda r: answers[r.url.path.rsplit("/", 1)[-1]], tmp_path)
    with pytest.raises(CdbError) as raised:
        store.api.post("pt", {"name": "A"})
    assert_one_line(raised.value, "POST pt", "HTTP 400", "name: payload type with this name")
    with pytest.raises(CdbError) as raised:
        store.api.get("payloadiovs")
    assert_one_line(raised.value, "HTTP 301", "redirected to /api/cdb_rest/payloadiovs/")
    with pytest.raises(CdbError) as raised:
        store.tag("gt")
    assert_one_line(raised.value, "HTTP 200 but the answer is not JSON", "text/html")


def test_a_server_that_is_down_or_silent_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(CdbError) as raised:
        RestStore(f"http://127.0.0.1:{port}", payloads=tmp_path).tag("gt")
    assert_one_line(raised.value, "GET globalTag/gt", f"cannot reach http://127.0.0.1:{port}/")

    def silent(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with pytest.raises(CdbError) as raised:
        mocked(silent, tmp_path).tag("gt")
    assert_one_line(raised.value, "GET globalTag/gt", "no answer", "within 30 s")


def test_the_command_line_reports_a_server_error_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = b2cal_inline("cdb", "--db", f"http://127.0.0.1:{port}", "tags")
    assert_one_line_error(result, "cannot reach")


def test_the_command_line_works_on_nopayloaddb_by_configuration(tmp_path: Path) -> None:
    with server_url() as url:
        env = {
            "B2CAL_CDB_URL": url,
            "B2CAL_HOME": str(tmp_path / "home"),
            "B2CAL_CDB_PAYLOADS": str(tmp_path / "payloads"),
        }
        if server_token():
            env["B2CAL_CDB_TOKEN"] = server_token() or ""

        def cdb(*args: str) -> subprocess.CompletedProcess[str]:
            return b2cal_inline("cdb", *args, env=env)

        assert cdb("create", "staging", "--description", "bucket 1").returncode == 0
        assert cdb("state", "staging", "TESTING").returncode == 0
        shown = json.loads(cdb("tags", "--json").stdout)
        assert [(t["name"], t["state"]) for t in shown] == [("staging", "TESTING")]
        assert_one_line_error(cdb("state", "staging", "RUNNING"), "staging", "TESTING")


# --- the bearer token -------------------------------------------------------------------------
def test_the_token_goes_with_writes_only(tmp_path: Path) -> None:
    token = hs256_token("s3cret")
    with running_fake(jwt_secret="s3cret") as fake:
        with RestStore(fake.url, token=token, payloads=tmp_path) as store:
            store.create_tag("gt")
            store.write_iovs("gt", [new("A", "a", "1,0,-1,-1")], state=OPEN)
            store.set_state("gt", TagState.RUNNING)
            assert placed(store, "gt") == [("A", 1, "1,0,-1,-1")]
        writes = [auth for method, _, auth in fake.requests if method != "GET"]
        reads = [auth for method, _, auth in fake.requests if method == "GET"]
        assert writes and all(auth == f"Bearer {token}" for auth in writes)
        assert reads and all(auth is None for auth in reads)
        for wrong, reason in [(None, "credentials were not provided"), ("x.y.z", "invalid")]:
            with RestStore(fake.url, token=wrong, payloads=tmp_path) as store:
                assert store.tag("gt").state is TagState.RUNNING  # reads need no token
                with pytest.raises(CdbError) as raised:
                    store.create_tag("other")
                assert_one_line(raised.value, "HTTP 403", reason)


def test_a_real_server_that_wants_a_token_refuses_writes_without_it(tmp_path: Path) -> None:
    with server_url() as url:
        if not server_token():
            pytest.skip(f"needs a real server with JWT authentication and {REAL_TOKEN_ENV}")
        with RestStore(url, payloads=tmp_path) as store, pytest.raises(CdbError) as raised:
            store.create_tag("gt")
        assert_one_line(raised.value, "HTTP 403")


# --- workarounds --------------------------------------------------------------------------------
def test_lookup_checks_the_end_the_server_ignores(store: RestStore) -> None:
    store.create_tag("gt")
    store.write_iovs("gt", [new("A", "a", "1,0,1,9"), new("B", "b", "1,0,-1,-1")], state=OPEN)
    rows = store.api.get("payloadiovs/", gtName="gt", majorIOV=1, minorIOV=20, shape="dict")
    assert {row["payload_type_name"] for row in rows} == {"A", "B"}  # the server's answer
    with pytest.raises(NoPayloadValid, match="no payload A valid at experiment 1 run 20"):
        store.lookup(["gt"], "A", ExpRun(1, 20))
    assert store.lookup(["gt"], "A", ExpRun(1, 9)).iov == IoV(1, 0, 1, 9)
    assert store.lookup(["gt"], "B", ExpRun(1, 20)).iov == IoV(1, 0, -1, -1)
    with pytest.raises(UnknownTag, match="'nope'"):
        store.lookup(["gt", "nope"], "C", ExpRun(1, 1))


def server_status(store: RestStore, tag: str) -> str:
    status: str = store.api.get(f"globalTag/{tag}", light=1)["status"]
    return status


def test_appending_to_a_running_tag_unlocks_it_for_the_moment(tmp_path: Path) -> None:
    with running_fake() as fake, RestStore(fake.url, payloads=tmp_path) as store:
        store.create_tag("gt")
        store.write_iovs("gt", [new("A", "a1", "1,0,-1,-1")], state=OPEN)
        store.set_state("gt", TagState.RUNNING)
        assert server_status(store, "gt") == "locked"
        start = len(fake.requests)
        store.write_iovs(
            "gt", [new("A", "a2", "1,10,1,19"), new("A", "a3", "1,20,-1,-1")], state=RUNNING
        )
        # a single append, no new list
        store.write_iovs("gt", [new("A", "a4", "2,0,-1,-1")], state=RUNNING)
        changes = [
            path.rsplit("/", 1)[-1]
            for method, path, _ in fake.requests[start:]
            if "gt_change_status" in path
        ]
        assert changes == ["unlocked", "locked", "unlocked", "locked"]
        assert server_status(store, "gt") == "locked"
        assert store.tag("gt").state is TagState.RUNNING
        assert placed(store, "gt") == [
            ("A", 1, "1,0,1,9"),
            ("A", 2, "1,10,1,19"),
            ("A", 3, "1,20,1,-1"),
            ("A", 4, "2,0,-1,-1"),
        ]
        appended = [p for m, p, _ in fake.requests[start:] if p.endswith("pl_attach")]
        assert len(appended) == 1  # the first write replaced the list, the second appended


def test_a_new_payload_name_joins_a_running_tag_without_unlocking(tmp_path: Path) -> None:
    with running_fake() as fake, RestStore(fake.url, payloads=tmp_path) as store:
        store.create_tag("gt")
        store.set_state("gt", TagState.RUNNING)
        start = len(fake.requests)
        store.write_iovs("gt", [new("B", "b", "1,0,-1,-1")], state=RUNNING)
        assert not [p for _, p, _ in fake.requests[start:] if "gt_change_status" in p]
        assert placed(store, "gt") == [("B", 1, "1,0,-1,-1")]


def test_inserting_before_existing_iovs_of_an_open_tag_rebuilds_the_list(store: RestStore) -> None:
    store.create_tag("gt")
    store.write_iovs("gt", [new("A", "a2", "1,10,1,19")], state=OPEN)
    # the server alone would fail (HTML 500)
    store.write_iovs("gt", [new("A", "a1", "1,0,1,4")], state=OPEN)
    store.write_iovs("gt", [new("A", "a3", "1,5,1,9")], state=OPEN)  # inside the gap: the same
    assert placed(store, "gt") == [("A", 2, "1,0,1,4"), ("A", 3, "1,5,1,9"), ("A", 1, "1,10,1,19")]
    assert [e.payload.checksum for e in store.iovs("gt")] == [
        md5sum(b"a1"),
        md5sum(b"a3"),
        md5sum(b"a2"),
    ]


def test_a_closed_iov_after_an_open_ended_one_is_not_split(store: RestStore) -> None:
    # Appending it to the list would make the server split the open-ended IoV around it.
    store.create_tag("gt")
    store.write_iovs("gt", [new("A", "a1", "1,0,-1,-1")], state=OPEN)
    store.set_state("gt", TagState.RUNNING)
    store.write_iovs("gt", [new("A", "a2", "1,10,1,19")], state=RUNNING)
    assert placed(store, "gt") == [("A", 1, "1,0,1,9"), ("A", 2, "1,10,1,19")]
    with pytest.raises(NoPayloadValid):
        store.lookup(["gt"], "A", ExpRun(1, 20))


def test_a_server_in_discrete_iov_mode_is_not_written_to(tmp_path: Path) -> None:
    settings = {"CDB_IOV_MODE": "discrete"}
    with running_fake(settings=settings) as fake, RestStore(fake.url, payloads=tmp_path) as store:
        store.create_tag("gt")
        with pytest.raises(CdbError, match="CDB_IOV_MODE=discrete"):
            store.write_iovs("gt", [new("A", "a", "1,0,1,9")], state=OPEN)
        assert store.iovs("gt") == [] and store.find_payloads() == []


def test_state_and_description_are_shared_by_every_client(store: RestStore, tmp_path: Path) -> None:
    store.create_tag("gt", "prompt bucket 7")
    store.set_state("gt", TagState.TESTING)
    store.set_state("gt", TagState.VALIDATED)  # both frozen on the server
    with client(store.api.root, tmp_path / "elsewhere") as other:
        assert other.tag("gt") == store.tag("gt")
        assert other.tag("gt").state is TagState.VALIDATED
        assert other.tag("gt").description == "prompt bucket 7"
    assert server_status(store, "gt") == "frozen"
    assert [t.name for t in store.tags()] == ["gt"]  # the bookkeeping tag is not listed
    with pytest.raises(UnknownTag):
        store.tag(STATE_TAG)
    with pytest.raises(CdbError, match="bookkeeping"):
        store.create_tag(STATE_TAG)
    with pytest.raises(CdbError, match="too long"):
        store.create_tag("long", "x" * 300)
    with pytest.raises(CdbError, match="cannot be used with nopayloaddb"):
        store.create_tag("a/b")


def test_tags_made_by_other_tools_are_read(store: RestStore) -> None:
    api = store.api
    for name, status in [("theirs", "unlocked"), ("locked_one", "locked"), ("old", "frozen")]:
        api.post("gt", {"name": name, "status": "unlocked"})
        if name == "theirs":
            ensure_type(api, "Beam")
            plist = api.post("pl", {"payload_type": "Beam"})["name"]
            api.put("pl_attach", {"payload_list": plist, "global_tag": name})
            piov = api.post(
                "piov", {"payload_url": "D0DXMagnets.dat", "checksum": "e99a", "major_iov": 3,
                         "minor_iov": 0}
            )  # fmt: skip
            api.put("piov_attach", {"payload_list": plist, "piov_id": piov["id"]})
        api.put(f"gt_change_status/{name}/{status}")
    states = {t.name: t.state for t in store.tags()}
    assert states == {
        "theirs": TagState.OPEN,
        "locked_one": TagState.RUNNING,
        "old": TagState.PUBLISHED,
    }
    (entry,) = store.iovs("theirs")
    assert (entry.name, entry.payload.revision, entry.payload.checksum) == ("Beam", 0, "e99a")
    assert entry.iov == IoV(3, 0, -1, -1)
    with pytest.raises(UnknownPayload, match="not in the payload directory"):
        store.payload_data(entry.payload)
    # b2cal's writes keep the foreign IoV as it is when they rebuild the list
    store.write_iovs("theirs", [new("Beam", "mine", "1,0,1,9")], state=OPEN)
    rows = store.api.get("globalTag/theirs")["payload_lists"][0]["payload_iov"]
    assert sorted(r["payload_url"] for r in rows) == ["Beam/rev_1/" + md5sum(b"mine"),
                                                      "D0DXMagnets.dat"]  # fmt: skip
    # a RUNNING tag without a record of b2cal's is given one before it is unlocked
    store.write_iovs("locked_one", [new("X", "x1", "1,0,-1,-1")], state=RUNNING)
    store.write_iovs("locked_one", [new("X", "x2", "1,5,-1,-1")], state=RUNNING)
    assert server_status(store, "locked_one") == "locked"
    assert placed(store, "locked_one") == [("X", 1, "1,0,1,4"), ("X", 2, "1,5,-1,-1")]


# --- payload files --------------------------------------------------------------------------------
def test_payload_files_and_provenance_live_in_the_payload_directory(store: RestStore) -> None:
    store.create_tag("gt")
    store.write_iovs(
        "gt", [new("A", "constants", "1,0,1,9", calibration="A", iteration=2)], state=OPEN
    )
    payload = store.payload("A", 1)
    folder = store.files.root / "A" / "rev_1"
    assert (folder / payload.checksum).read_bytes() == b"constants"
    sidecar = json.loads((folder / "provenance.json").read_text())
    assert sidecar["provenance"] == {"calibration": "A", "iteration": 2}
    assert sidecar["checksum"] == payload.checksum == md5sum(b"constants")
    (row,) = store.api.get("globalTag/gt")["payload_lists"][0]["payload_iov"]
    assert (row["payload_url"], row["checksum"]) == (
        f"A/rev_1/{payload.checksum}",
        payload.checksum,
    )
    assert store.find_payloads(iteration=2) == [payload]

    (folder / payload.checksum).write_bytes(b"tampered")
    with pytest.raises(ChecksumMismatch, match="was changed"):
        store.payload_data(payload)
    (folder / payload.checksum).unlink()
    with pytest.raises(UnknownPayload, match="same payload directory"):
        store.payload_data(payload)


def test_a_revision_taken_meanwhile_is_skipped(
    store: RestStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.files.put("A", b"one", {})
    store.files.put("A", b"two", {})
    listed = store.files.revisions
    # A writer on another host (whose lock this one cannot see) took revision 2 meanwhile.
    monkeypatch.setattr(store.files, "revisions", lambda name: listed(name)[:1])
    stored = store.files.put("A", b"three", {})
    assert stored.revision == 3
    monkeypatch.undo()
    assert store.files.put("A", b"three", {"other": 1}) == stored  # stored once
    assert [p.revision for p in store.find_payloads("A")] == [1, 2, 3]
    assert not [p for p in (store.files.root / "A").iterdir() if p.name.startswith(".staging")]


def test_payload_names_must_be_usable_as_types_and_folders(store: RestStore) -> None:
    store.create_tag("gt")
    for name in ["../x", "a/b", ".hidden", "x" * 81]:
        with pytest.raises(CdbError, match="cannot be used"):
            store.write_iovs("gt", [NewPayloadIoV(name, b"x", IoV(1, 0, 1, 0))], state=OPEN)
    assert store.find_payloads() == [] and store.find_payloads("../x") == []
    with pytest.raises(UnknownPayload):
        store.payload("../A", 1)


# --- crashes in the middle of a write ---------------------------------------------------------
class Crash(BaseException):
    """The client process dies: nothing it would still send reaches the server."""


class Crashing(httpx.BaseTransport):
    """A transport whose process dies right after the server took its ``limit``-th write."""

    def __init__(self, limit: int | None) -> None:
        self.inner = httpx.HTTPTransport()
        self.limit = limit
        self.writes = 0
        self.dead = False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.dead:
            raise Crash
        response = self.inner.handle_request(request)
        if request.method != "GET":
            self.writes += 1
            if self.limit is not None and self.writes >= self.limit:
                response.read()
                self.dead = True
                raise Crash
        return response


def _running(store: RestStore) -> None:
    store.create_tag("gt", "prompt")
    store.write_iovs("gt", [new("A", "a1", "1,0,-1,-1"), new("B", "b1", "1,0,-1,-1")], state=OPEN)
    store.set_state("gt", TagState.RUNNING)


def _open(store: RestStore) -> None:
    store.create_tag("gt")
    store.write_iovs("gt", [new("A", "a1", "1,10,1,19"), new("B", "b1", "1,0,1,9")], state=OPEN)


def _write(state: TagState, *entries: NewPayloadIoV) -> Callable[[RestStore], object]:
    return lambda store: store.write_iovs("gt", entries, state=state)


def _state(state: TagState) -> Callable[[RestStore], object]:
    return lambda store: store.set_state("gt", state)


def _remove(name: str) -> Callable[[RestStore], object]:
    return lambda store: store.remove_iovs("gt", store.iovs("gt", name))


SCENARIOS: dict[str, tuple[Callable[[RestStore], None], Callable[[RestStore], object]]] = {
    "open: insert, append, new name": (
        _open,
        _write(
            OPEN,
            new("A", "a0", "1,0,1,9"),
            new("A", "a2", "1,20,-1,-1"),
            new("B", "b2", "1,10,1,19"),
            new("C", "c1", "1,0,-1,-1"),
        ),
    ),
    "open: remove": (_open, _remove("A")),
    "running: several appends": (
        _running,
        _write(
            RUNNING,
            new("A", "a2", "1,5,1,9"),
            new("A", "a3", "1,10,-1,-1"),
            new("B", "b2", "2,0,-1,-1"),
        ),
    ),
    "running: one append": (_running, _write(RUNNING, new("A", "a2", "1,5,-1,-1"))),
    "open to running": (_open, _state(TagState.RUNNING)),
    "open to testing": (_open, _state(TagState.TESTING)),
    "running to invalid": (_running, _state(TagState.INVALID)),
}


def _contents(store: RestStore) -> tuple[TagState, dict[str, list[tuple[str, int, str]]]]:
    by_name: dict[str, list[tuple[str, int, str]]] = {}
    for entry in placed(store, "gt"):
        by_name.setdefault(entry[0], []).append(entry)
    return store.tag("gt").state, by_name


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_a_crash_at_any_request_leaves_no_half_state_and_a_retry_completes(
    scenario: str, tmp_path: Path
) -> None:
    setup, work = SCENARIOS[scenario]

    def attempt(number: int, limit: int | None) -> tuple[Any, ...]:
        """Set up, crash at write ``limit``, check what is visible, retry; the outcomes."""
        with server_url() as url:
            payloads = tmp_path / f"attempt-{number}"
            with client(url, payloads) as store:
                setup(store)
                before = _contents(store)
            transport = Crashing(limit)
            with (
                client(url, payloads, transport=transport) as crashing,
                contextlib.suppress(Crash),
            ):
                work(crashing)
            with client(url, payloads) as store:
                seen = _contents(store)
                try:
                    work(store)  # the retry
                except ForbiddenChange:  # a state change that had completed already
                    assert seen[0] is not before[0]
                after = _contents(store)
                status = server_status(store, "gt")
                revisions = {
                    name: sorted(p.revision for p in store.find_payloads(name)) for name in "ABC"
                }
            return before, seen, after, status, revisions, transport.writes

    _, _, expected, status, revisions, writes = attempt(0, None)
    assert status == STATUS_OF[expected[0]]
    for limit in range(1, writes + 1):
        old, seen, after, status, stored, _ = attempt(limit, limit)
        where = f"crash after write {limit} of {writes}"
        assert (after, status, stored) == (expected, STATUS_OF[expected[0]], revisions), where
        assert seen[0] in (old[0], expected[0]), where
        for name in set(old[1]) | set(expected[1]):
            assert seen[1].get(name, []) in (old[1].get(name, []), expected[1].get(name, [])), (
                f"{where}: {name} is half-written: {seen[1].get(name)}"
            )


def test_a_crash_while_a_running_tag_is_unlocked_is_repaired(tmp_path: Path) -> None:
    with server_url() as url:
        with client(url, tmp_path) as store:
            _running(store)
        # die right after the unlock (writes: state record, unlock)
        crashing = client(url, tmp_path, transport=Crashing(2))
        with pytest.raises(Crash):
            crashing.write_iovs("gt", [new("A", "a2", "1,5,-1,-1")], state=RUNNING)
        with client(url, tmp_path) as store:
            assert server_status(store, "gt") == "unlocked"
            assert store.tag("gt").state is TagState.RUNNING  # still append-only for b2cal
            with pytest.raises(ForbiddenChange, match="append-only"):
                store.write_iovs("gt", [new("A", "a0", "0,0,0,5")], state=RUNNING)
            store.set_state("gt", TagState.RUNNING)  # completes: locks it again
            assert server_status(store, "gt") == "locked"
            with pytest.raises(ForbiddenChange, match="cannot become RUNNING"):
                store.set_state("gt", TagState.RUNNING)


# --- another client changing a tag while a write is under way --------------------------------
class Meddling(httpx.BaseTransport):
    """A transport that lets ``meddle`` (another client) change the server once, just before
    the first request to a path containing ``before``.

    ``user_settings/`` is asked once per client, after a write is planned and before anything
    of it is sent: there, the change falls between the write's reads and its requests.
    """

    def __init__(self, meddle: Callable[[], object], before: str = "user_settings/") -> None:
        self.inner = httpx.HTTPTransport()
        self.meddle: Callable[[], object] | None = meddle
        self.before = before

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.meddle is not None and self.before in request.url.path:
            meddle, self.meddle = self.meddle, None
            meddle()
        return self.inner.handle_request(request)


def local_database(directory: Path, name: str, *iovs: str) -> Path:
    write_local_database(directory, [(name, IoV.parse(i), {"iov": i}) for i in iovs])
    return directory


def test_an_upload_into_a_tag_made_running_meanwhile_is_refused(tmp_path: Path) -> None:
    outputdb = local_database(tmp_path / "out", "A", "1,0,-1,-1")
    with server_url() as url, client(url, tmp_path) as other:
        other.create_tag("gt")
        meddling = Meddling(lambda: other.set_state("gt", TagState.RUNNING))
        with client(url, tmp_path, transport=meddling) as store:
            with pytest.raises(ForbiddenChange, match="changes only by promotion"):
                upload(store, outputdb, "gt")
            assert meddling.meddle is None  # it did change the state meanwhile
        assert other.tag("gt").state is TagState.RUNNING
        assert other.iovs("gt") == []


def test_a_promotion_whose_staging_tag_changed_meanwhile_is_refused(tmp_path: Path) -> None:
    with server_url() as url, client(url, tmp_path) as other:
        for tag, iov in [("running", "1,0,-1,-1"), ("staging", "1,10,-1,-1")]:
            other.create_tag(tag)
            upload(other, local_database(tmp_path / tag, "A", iov), tag)
        other.set_state("running", TagState.RUNNING)
        for state in (TagState.TESTING, TagState.VALIDATED):
            other.set_state("staging", state)
        before = placed(other, "running")

        def reopen_change_and_validate() -> None:
            other.set_state("staging", TagState.OPEN)
            other.remove_iovs("staging", other.iovs("staging"))
            upload(other, local_database(tmp_path / "late", "A", "1,20,-1,-1"), "staging")
            for state in (TagState.TESTING, TagState.VALIDATED):
                other.set_state("staging", state)

        meddling = Meddling(reopen_change_and_validate)
        with client(url, tmp_path, transport=meddling) as store:
            with pytest.raises(ForbiddenChange, match="staging changed state while"):
                promote(store, "staging", "running", ExpRun(1, 10))
            assert meddling.meddle is None
        assert placed(other, "running") == before
        assert server_status(other, "running") == "locked"


# --- the fake behaves like the server (run with B2CAL_TEST_NOPAYLOADDB_URL to compare) ---------
@pytest.fixture
def api() -> Iterator[NopayloaddbApi]:
    with server_url() as url:
        opened = NopayloaddbApi(url, token=server_token())
        yield opened
        opened.close()


def ensure_type(api: NopayloaddbApi, name: str) -> None:
    """Payload types outlive the global tags a real test server is emptied of."""
    try:
        api.post("pt", {"name": name})
    except NopayloaddbError as exc:
        assert exc.status == 400 and "already exists" in str(exc)


def _tag_with_list(api: NopayloaddbApi, tag: str, ptype: str = "A") -> str:
    api.post("gt", {"name": tag, "status": "unlocked"})
    ensure_type(api, ptype)
    plist: str = api.post("pl", {"payload_type": ptype})["name"]
    api.put("pl_attach", {"payload_list": plist, "global_tag": tag})
    return plist


def _append(api: NopayloaddbApi, plist: str, url: str, server: ServerIoV) -> None:
    body: dict[str, Any] = {
        "payload_url": url,
        "checksum": "c-" + url,
        "major_iov": server.major,
        "minor_iov": server.minor,
    }
    if server.major_end is not None:
        body.update(major_iov_end=server.major_end, minor_iov_end=server.minor_end)
    piov = api.post("piov", body)
    api.put("piov_attach", {"payload_list": plist, "piov_id": piov["id"]})


def _rows(api: NopayloaddbApi, tag: str) -> list[tuple[str, int, int, int, int]]:
    doc = api.get(f"globalTag/{tag}")
    return sorted(
        (r["payload_url"], r["major_iov"], r["minor_iov"], r["major_iov_end"], r["minor_iov_end"])
        for plist in doc["payload_lists"]
        for r in plist["payload_iov"]
    )


def test_server_paths_must_be_exact(api: NopayloaddbApi) -> None:
    with pytest.raises(NopayloaddbError, match="HTTP 301"):
        api.get("payloadiovs", gtName="x", majorIOV=1, minorIOV=0)
    with pytest.raises(NopayloaddbError, match="HTTP 404: an error page"):
        api.get("globalTags/")
    with pytest.raises(NopayloaddbError, match=r"HTTP 404: Not found\."):
        api.get("globalTag/none")
    assert api.get("payloadiovs/", gtName="none", majorIOV=1, minorIOV=0) == []
    with pytest.raises(NopayloaddbError, match="HTTP 404: Setting 'CDB_IOV_MODE' not found"):
        api.get("user_settings/CDB_IOV_MODE/")  # left at its default, continuous


def test_server_crashes_are_html_and_roll_back(api: NopayloaddbApi) -> None:
    with pytest.raises(NopayloaddbError, match="HTTP 500: an error page, not JSON"):
        api.post("gt", {"name": "x", "status": "no such status"})
    plist = _tag_with_list(api, "gt")
    _append(api, plist, "u2", ServerIoV(1, 10, 1, 20))
    for server in [ServerIoV(1, 0, 1, 5), ServerIoV(1, 12, 1, 15)]:  # before; inside
        with pytest.raises(NopayloaddbError, match="HTTP 500: an error page"):
            _append(api, plist, "bad", server)
    assert _rows(api, "gt") == [("u2", 1, 10, 1, 20)]
    with pytest.raises(NopayloaddbError, match="HTTP 500: an error page"):
        api.put("pl_attach", {"payload_list": "no such list", "global_tag": "gt"})
    with pytest.raises(NopayloaddbError, match="HTTP 400: name: global tag with this name"):
        api.post("gt", {"name": "gt", "status": "unlocked"})
    with pytest.raises(NopayloaddbError, match="HTTP 400: checksum"):
        api.post("piov", {"payload_url": "x", "checksum": "", "major_iov": 1, "minor_iov": 0})


def test_server_trims_and_splits_on_unlocked_tags(api: NopayloaddbApi) -> None:
    plist = _tag_with_list(api, "gt")
    _append(api, plist, "u1", ServerIoV(1, 0, None, None))
    _append(api, plist, "u2", ServerIoV(1, 10, None, None))  # trims u1
    _append(api, plist, "u3", ServerIoV(1, 20, 1, 30))  # splits u2 around itself
    assert _rows(api, "gt") == [
        ("u1", 1, 0, 1, 10),
        ("u2", 1, 10, 1, 20),
        ("u2", 1, 30, OPEN_END, OPEN_END),
        ("u3", 1, 20, 1, 30),
    ]
    rows = api.get("payloadiovs/", gtName="gt", majorIOV=1, minorIOV=25, shape="dict")
    assert [(r["payload_url"], r["major_iov_end"], r["minor_iov_end"]) for r in rows] == [
        ("u3", 1, 30)
    ]
    rows = api.get("payloadiovs/", gtName="gt", majorIOV=1, minorIOV=5)
    assert rows == [["A", "u1", "c-u1", None, 1, 0, 1, 10, None]]  # lists without shape=dict


def test_server_lookup_ignores_the_end(api: NopayloaddbApi) -> None:
    plist = _tag_with_list(api, "gt")
    _append(api, plist, "u1", ServerIoV(1, 0, 1, 10))
    rows = api.get("payloadiovs/", gtName="gt", majorIOV=7, minorIOV=0, shape="dict")
    assert [r["payload_url"] for r in rows] == ["u1"]


def test_server_locked_and_frozen_tags(api: NopayloaddbApi) -> None:
    plist = _tag_with_list(api, "gt")
    _append(api, plist, "u1", ServerIoV(1, 0, None, None))
    api.put("gt_change_status/gt/locked")
    _append(api, plist, "u2", ServerIoV(1, 10, None, None))  # accepted, u1 stays open-ended
    with pytest.raises(NopayloaddbError, match="HTTP 500: an error page"):
        _append(api, plist, "u3", ServerIoV(1, 20, 1, 30))
    with pytest.raises(NopayloaddbError, match="HTTP 500: GT is LOCKED"):
        _append(api, plist, "u4", ServerIoV(1, 10, 1, 11))
    other = api.post("pl", {"payload_type": "A"})["name"]
    with pytest.raises(NopayloaddbError, match="already attached and Global Tag is locked"):
        api.put("pl_attach", {"payload_list": other, "global_tag": "gt"})
    assert _rows(api, "gt") == [("u1", 1, 0, OPEN_END, OPEN_END), ("u2", 1, 10, OPEN_END, OPEN_END)]
    api.put("gt_change_status/gt/frozen")
    with pytest.raises(NopayloaddbError, match="HTTP 500: Global Tag is frozen"):
        _append(api, plist, "u5", ServerIoV(2, 0, None, None))
    with pytest.raises(NopayloaddbError, match="HTTP 500: Global Tag is frozen"):
        api.delete("deleteGlobalTag/gt")
    clone = api.post("cloneGlobalTag/gt/copy")
    assert (clone["status"], clone["payload_iov_count"]) == ("unlocked", 2)


def test_server_bulk_insert_drops_checksum_and_end(api: NopayloaddbApi) -> None:
    plist = _tag_with_list(api, "gt")
    item = {"payload_url": "b", "checksum": "kept?", "major_iov": 1, "minor_iov": 0,
            "major_iov_end": 1, "minor_iov_end": 5, "payload_list": plist}  # fmt: skip
    with pytest.raises(NopayloaddbError, match="HTTP 200 but the answer is not JSON"):
        api.post("bulk_piov", [item])
    (row,) = api.get("globalTag/gt")["payload_lists"][0]["payload_iov"]
    assert (row["checksum"], row["major_iov_end"], row["minor_iov_end"]) == (
        "",
        OPEN_END,
        OPEN_END,
    )
