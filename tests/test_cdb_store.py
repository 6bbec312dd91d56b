"""The conditions-database contract, run against every store (conftest's ``store`` fixture).

Behaviour every store must share is tested through ``store``: global-tag states and their
transitions, what each state lets a write do, idempotent writes, revisions, provenance queries,
lookups through a chain of tags. Every refused request is checked to leave the database exactly
as it was. What only the embedded store does (payload files on disk, migrations, several
processes at once) is tested through ``sql_store`` and the SQL databases directly.
"""

from __future__ import annotations

import itertools
import multiprocessing
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from conftest import SQL_STORES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sql_databases import database_url
from sqlalchemy import text

from b2cal.cdb.embedded import EmbeddedStore
from b2cal.cdb.model import TRANSITIONS, TagState
from b2cal.cdb.schema import LABEL, MIGRATIONS, VERSION_TABLE, metadata
from b2cal.cdb.store import ConditionsStore, NewPayloadIoV
from b2cal.core.files import md5sum
from b2cal.core.iov import ExpRun, IoV
from b2cal.errors import (
    CdbError,
    ChecksumMismatch,
    DatabaseError,
    ForbiddenChange,
    NoPayloadValid,
    UnknownPayload,
    UnknownTag,
)
from b2cal.sql.engine import SqlDatabase
from b2cal.sql.migrations import upgrade

OPEN, RUNNING = TagState.OPEN, TagState.RUNNING
FROZEN = [TagState.TESTING, TagState.VALIDATED, TagState.PUBLISHED, TagState.INVALID]


# --- helpers ----------------------------------------------------------------------------------
def iov(text: str) -> IoV:
    return IoV.parse(text)


def new(name: str, data: str, where: str, **provenance: Any) -> NewPayloadIoV:
    return NewPayloadIoV(name, data.encode(), iov(where), provenance)


def state_path(target: TagState) -> list[TagState]:
    """The shortest chain of allowed transitions from OPEN (where tags start) to ``target``."""
    paths = {TagState.OPEN: [TagState.OPEN]}
    todo = deque([TagState.OPEN])
    while todo:
        here = todo.popleft()
        for nxt in sorted(TRANSITIONS[here]):
            if nxt not in paths:
                paths[nxt] = [*paths[here], nxt]
                todo.append(nxt)
    return paths[target]


def tag_in_state(
    store: ConditionsStore, name: str, state: TagState, entries: Sequence[NewPayloadIoV] = ()
) -> None:
    """A tag holding ``entries`` (written while OPEN) and then moved to ``state``."""
    store.create_tag(name)
    if entries:
        store.write_iovs(name, entries, state=OPEN)
    for step in state_path(state)[1:]:
        store.set_state(name, step)


def snapshot(store: ConditionsStore) -> tuple[Any, ...]:
    """Everything a store holds, to show that a refused request changed nothing."""
    tags = store.tags()
    iovs = {t.name: store.iovs(t.name) for t in tags}
    payloads = [(p, p.provenance) for p in store.find_payloads()]
    return tags, iovs, payloads


def placed(store: ConditionsStore, tag: str) -> list[tuple[str, int, str]]:
    """A tag's contents as (name, revision, IoV) for short assertions."""
    return [(e.name, e.payload.revision, str(e.iov)) for e in store.iovs(tag)]


# --- global tags and their states -------------------------------------------------------------
def test_every_state_transition_follows_the_table(store: ConditionsStore) -> None:
    wrong = []
    for old, target in itertools.product(TagState, repeat=2):
        name = f"gt_{old.value}_{target.value}".lower()
        tag_in_state(store, name, old)
        allowed = target in TRANSITIONS[old]
        try:
            store.set_state(name, target)
            moved = True
        except ForbiddenChange as exc:
            moved = False
            assert name in str(exc)
        now = store.tag(name).state
        if moved != allowed or now is not (target if allowed else old):
            wrong.append(
                f"{old.value} -> {target.value}: allowed={allowed} moved={moved} now={now}"
            )
    assert wrong == []
    assert len(store.tags()) == 36


def test_create_tag_and_refuse_a_duplicate(store: ConditionsStore) -> None:
    made = store.create_tag("staging_b", "prompt bucket 12")
    store.create_tag("staging_a")
    assert made.name == "staging_b" and made.state is TagState.OPEN
    assert made.description == "prompt bucket 12" and made.created is not None
    assert store.tag("staging_b") == made
    assert [t.name for t in store.tags()] == ["staging_a", "staging_b"]
    before = snapshot(store)
    with pytest.raises(CdbError, match="staging_b"):
        store.create_tag("staging_b", "again")
    assert snapshot(store) == before


def test_new_tags_need_a_name_every_store_takes(store: ConditionsStore) -> None:
    for good in ["a", "7", "Prompt_e26-b12.v1+fix", "x" * 80]:
        assert store.create_tag(good).name == good
    store.write_iovs("a", [new("A", "a1", "1,0,1,9")], state=OPEN)
    before = snapshot(store)
    bad_names = ["", "a/b", "gt ", " gt", "gt\n", "_gt", ".gt", "-gt", "+gt", "a b", "ä", "x" * 81]
    for bad in bad_names:
        for make in ["create_tag", "clone_tag"]:
            with pytest.raises(CdbError, match=r"^global tag name .* _ \. \+ -") as raised:
                if make == "create_tag":
                    store.create_tag(bad)
                else:
                    store.clone_tag("a", bad)
            assert type(raised.value) is CdbError and "\n" not in str(raised.value)
    assert snapshot(store) == before


def test_unknown_tags_are_named(store: ConditionsStore) -> None:
    store.create_tag("real")
    entry = new("A", "a", "1,0,1,9")
    calls = {
        "tag": lambda: store.tag("nope"),
        "set_state": lambda: store.set_state("nope", TagState.TESTING),
        "clone_tag": lambda: store.clone_tag("nope", "copy"),
        "iovs": lambda: store.iovs("nope"),
        "write_iovs": lambda: store.write_iovs("nope", [entry], state=OPEN),
        "remove_iovs": lambda: store.remove_iovs("nope", []),
        "lookup": lambda: store.lookup(["real", "nope"], "A", ExpRun(1, 1)),
    }
    for call in calls.values():
        with pytest.raises(UnknownTag, match="unknown global tag 'nope'"):
            call()
    assert [t.name for t in store.tags()] == ["real"]
    assert store.find_payloads() == []


def test_clone_copies_the_iovs_into_a_new_open_tag(store: ConditionsStore) -> None:
    entries = [new("A", "a1", "1,0,1,4"), new("A", "a2", "1,5,-1,-1"), new("B", "b", "1,0,-1,-1")]
    tag_in_state(store, "main", TagState.RUNNING, entries)
    copy = store.clone_tag("main", "main_copy", "for tests")
    assert copy.state is TagState.OPEN and copy.description == "for tests"
    assert placed(store, "main_copy") == placed(store, "main")
    assert {e.tag for e in store.iovs("main_copy")} == {"main_copy"}
    store.remove_iovs("main_copy", store.iovs("main_copy", "B"))
    assert len(store.iovs("main")) == 3 and len(store.iovs("main_copy")) == 2
    assert store.tag("main").state is TagState.RUNNING
    before = snapshot(store)
    with pytest.raises(CdbError, match="main_copy"):
        store.clone_tag("main", "main_copy")
    assert snapshot(store) == before


# --- what each state lets a write do ----------------------------------------------------------
def test_open_tag_takes_additions_and_removals(store: ConditionsStore) -> None:
    store.create_tag("gt")
    change = store.write_iovs(
        "gt", [new("A", "a1", "1,0,1,4"), new("A", "a2", "1,5,1,9")], state=OPEN
    )
    assert [(p.name, p.revision, str(i)) for p, i in change.add] == [
        ("A", 1, "1,0,1,4"),
        ("A", 2, "1,5,1,9"),
    ]
    store.write_iovs("gt", [new("B", "b", "1,0,1,9")], state=OPEN)  # other names may overlap
    first = store.iovs("gt", "A")[0]
    change = store.remove_iovs("gt", [first])
    assert change.remove == [first]
    assert placed(store, "gt") == [("A", 2, "1,5,1,9"), ("B", 1, "1,0,1,9")]
    assert store.payload("A", 1) == first.payload  # removing an IoV keeps the payload
    assert store.remove_iovs("gt", [first]).empty


def test_open_tag_refuses_overlapping_iovs_of_one_name(store: ConditionsStore) -> None:
    tag_in_state(store, "gt", TagState.OPEN, [new("A", "a1", "1,0,1,9")])
    before = snapshot(store)
    for where in ["1,9,2,0", "0,0,-1,-1", "1,3,1,3"]:
        with pytest.raises(ForbiddenChange, match="overlaps"):
            store.write_iovs("gt", [new("A", "a2", where)], state=OPEN)
    with pytest.raises(ForbiddenChange, match="overlaps"):
        store.write_iovs("gt", [new("C", "c1", "2,0,2,5"), new("C", "c2", "2,5,2,9")], state=OPEN)
    assert snapshot(store) == before


def test_running_tag_appends_and_closes_the_open_ended_iov(store: ConditionsStore) -> None:
    tag_in_state(store, "gt", TagState.RUNNING, [new("A", "a1", "1,0,-1,-1")])
    change = store.write_iovs("gt", [new("A", "a2", "1,10,-1,-1")], state=RUNNING)
    assert [(old.iov, closed) for old, closed in change.close] == [
        (iov("1,0,-1,-1"), iov("1,0,1,9"))
    ]
    assert placed(store, "gt") == [("A", 1, "1,0,1,9"), ("A", 2, "1,10,-1,-1")]
    # across an experiment boundary
    store.write_iovs("gt", [new("A", "a3", "2,0,-1,-1")], state=RUNNING)
    assert placed(store, "gt")[1:] == [("A", 2, "1,10,1,-1"), ("A", 3, "2,0,-1,-1")]
    store.write_iovs("gt", [new("B", "b", "1,0,1,5")], state=RUNNING)  # a new name starts anywhere


def test_running_tag_refuses_inserts_before_and_removals(store: ConditionsStore) -> None:
    tag_in_state(
        store, "gt", TagState.RUNNING, [new("A", "a1", "1,5,1,9"), new("A", "a2", "1,10,-1,-1")]
    )
    before = snapshot(store)
    for where in ["1,0,1,4", "1,7,-1,-1", "1,10,1,20"]:
        with pytest.raises(ForbiddenChange, match="append-only"):
            store.write_iovs("gt", [new("A", "a3", where)], state=RUNNING)
    with pytest.raises(ForbiddenChange, match="OPEN"):
        store.remove_iovs("gt", store.iovs("gt"))
    assert snapshot(store) == before


def test_running_tag_refuses_appending_into_a_closed_iov(store: ConditionsStore) -> None:
    tag_in_state(store, "gt", TagState.RUNNING, [new("A", "a1", "1,0,1,9")])
    before = snapshot(store)
    with pytest.raises(ForbiddenChange, match="closed"):
        store.write_iovs("gt", [new("A", "a2", "1,5,-1,-1")], state=RUNNING)
    assert snapshot(store) == before


def test_frozen_tags_refuse_every_write(store: ConditionsStore) -> None:
    for state in FROZEN:
        tag_in_state(store, state.value, state, [new("A", "a1", "1,0,1,9")])
    before = snapshot(store)
    for state in FROZEN:
        with pytest.raises(ForbiddenChange, match=state.value):
            store.write_iovs(state.value, [new("A", "a2", "2,0,-1,-1")], state=state)
        with pytest.raises(ForbiddenChange, match=state.value):
            store.remove_iovs(state.value, store.iovs(state.value))
    assert snapshot(store) == before


def test_a_refused_write_leaves_nothing_of_its_earlier_entries(store: ConditionsStore) -> None:
    tag_in_state(store, "open", TagState.OPEN, [new("A", "a1", "1,0,1,9")])
    running = [new("A", "a1", "1,0,-1,-1"), new("B", "b1", "1,5,-1,-1")]
    tag_in_state(store, "running", TagState.RUNNING, running)
    before = snapshot(store)
    with pytest.raises(ForbiddenChange):  # B alone is fine; the second entry overlaps
        store.write_iovs("open", [new("B", "b", "1,0,1,9"), new("A", "a2", "1,5,1,20")], state=OPEN)
    with pytest.raises(ForbiddenChange):  # appending A would close its IoV; B inserts before
        store.write_iovs(
            "running", [new("A", "a2", "1,10,-1,-1"), new("B", "b2", "1,0,1,3")], state=RUNNING
        )
    bad = NewPayloadIoV("B", b"b", iov("2,0,2,9"), checksum=md5sum(b"something else"))
    with pytest.raises(ChecksumMismatch, match="differs"):
        store.write_iovs("open", [new("C", "c", "2,0,2,9"), bad], state=OPEN)
    assert snapshot(store) == before
    assert [p.revision for p in store.find_payloads("B")] == [1]
    assert store.find_payloads("C") == []


# --- payloads -------------------------------------------------------------------------------------
def test_writing_the_same_entries_again_changes_nothing(store: ConditionsStore) -> None:
    entries = [new("A", "a1", "1,0,1,4"), new("A", "a2", "1,5,-1,-1"), new("B", "b", "1,0,-1,-1")]
    store.create_tag("gt")
    assert len(store.write_iovs("gt", entries, state=OPEN).add) == 3
    before = snapshot(store)
    assert store.write_iovs("gt", entries, state=OPEN).empty
    for state in [TagState.RUNNING, TagState.INVALID]:  # a retried upload after a promotion
        store.set_state("gt", state)
        assert store.write_iovs("gt", entries, state=state).empty
    assert snapshot(store)[1:] == before[1:]


def test_revisions_count_from_one_per_name(store: ConditionsStore) -> None:
    store.create_tag("gt")
    store.write_iovs("gt", [new("A", "x", "1,0,1,0"), new("A", "y", "1,1,1,1")], state=OPEN)
    store.write_iovs("gt", [new("B", "x", "1,0,1,0"), new("A", "x", "1,2,1,2")], state=OPEN)
    store.write_iovs("gt", [new("A", "z", "1,3,1,3")], state=OPEN)
    assert placed(store, "gt") == [
        ("A", 1, "1,0,1,0"),
        ("A", 2, "1,1,1,1"),
        ("A", 1, "1,2,1,2"),
        ("A", 3, "1,3,1,3"),
        ("B", 1, "1,0,1,0"),
    ]
    a3 = store.payload("A", 3)
    assert (a3.checksum, a3.size) == (md5sum(b"z"), 1)
    assert store.payload_data(a3) == b"z"
    assert store.payload("B", 1).checksum == store.payload("A", 1).checksum
    with pytest.raises(UnknownPayload, match="A"):
        store.payload("A", 4)
    with pytest.raises(UnknownPayload, match="C"):
        store.payload("C", 1)


def test_payloads_are_found_by_provenance(store: ConditionsStore) -> None:
    store.create_tag("gt")
    t0 = {"calibration": "ChannelT0", "calibration_run": "3f2a"}
    store.write_iovs(
        "gt",
        [
            new("ChannelT0", "t0 1", "1,0,1,4", **t0, iteration=1),
            new("ChannelT0", "t0 2", "1,5,1,9", **t0, iteration=2),
            new(
                "ChannelGain",
                "g",
                "1,0,1,9",
                calibration="ChannelGain",
                iteration=1,
                upstream=["ChannelT0/1", "ChannelT0/2"],
            ),
        ],
        state=OPEN,
    )
    store.write_iovs("gt", [new("ChannelT0", "t0 1", "2,0,2,4", calibration="other")], state=OPEN)

    def found(*args: Any, **kwargs: Any) -> list[tuple[str, int]]:
        return [(p.name, p.revision) for p in store.find_payloads(*args, **kwargs)]

    assert found() == [("ChannelGain", 1), ("ChannelT0", 1), ("ChannelT0", 2)]
    assert found(iteration=1) == [("ChannelGain", 1), ("ChannelT0", 1)]
    assert found("ChannelT0", iteration=1) == [("ChannelT0", 1)]
    assert found(calibration_run="3f2a") == [("ChannelT0", 1), ("ChannelT0", 2)]
    assert found(upstream=["ChannelT0/1", "ChannelT0/2"]) == [("ChannelGain", 1)]
    assert found(iteration=3) == [] and found(calibration="other") == []
    assert found("Nothing") == []
    # a payload is immutable: the same data again keeps its first provenance
    assert store.payload("ChannelT0", 1).provenance == {**t0, "iteration": 1}


# --- lookups ---------------------------------------------------------------------------------
def test_lookup_through_a_chain_of_tags(store: ConditionsStore) -> None:
    store.create_tag("prompt")
    store.create_tag("base")
    store.write_iovs("prompt", [new("A", "prompt", "1,5,1,9")], state=OPEN)
    store.write_iovs("base", [new("A", "base", "1,0,1,-1"), new("B", "b", "0,0,-1,-1")], state=OPEN)
    chain = ["prompt", "base"]

    def source(name: str, exp: int, run: int, tags: list[str] = chain) -> tuple[str, bytes]:
        found = store.lookup(tags, name, ExpRun(exp, run))
        return found.tag, store.payload_data(found.payload)

    assert source("A", 1, 5) == ("prompt", b"prompt")
    assert source("A", 1, 9) == ("prompt", b"prompt")
    assert source("A", 1, 10) == ("base", b"base")
    assert source("A", 1, 10**6) == ("base", b"base")
    assert source("A", 1, 7, ["base", "prompt"]) == ("base", b"base")
    assert source("B", 5, 0) == ("base", b"b")
    for name, exp, run, tags in [("A", 2, 0, chain), ("A", 1, 2, ["prompt"]), ("C", 1, 1, chain)]:
        with pytest.raises(NoPayloadValid, match=f"no payload {name} valid at experiment {exp}"):
            store.lookup(tags, name, ExpRun(exp, run))


GRID = [ExpRun(exp, run) for exp in range(3) for run in range(5)]
PROBES = [*GRID, ExpRun(0, 1000), ExpRun(1, 1000), ExpRun(2, 1000), ExpRun(3, 0)]


@st.composite
def disjoint_iovs(draw: st.DrawFn) -> list[IoV]:
    """IoVs of one payload name that do not overlap, with every kind of upper end."""
    starts = sorted(draw(st.sets(st.sampled_from(GRID), max_size=4)))
    iovs = []
    for start, nxt in itertools.zip_longest(starts, starts[1:]):
        ends = [(p.exp, p.run) for p in GRID if start <= p and (nxt is None or p < nxt)]
        ends += [(exp, -1) for exp in range(start.exp, 3) if nxt is None or exp < nxt.exp]
        ends += [(-1, -1)] if nxt is None else []
        exp_high, run_high = draw(st.sampled_from(ends))
        iovs.append(IoV(start.exp, start.run, exp_high, run_high))
    return iovs


def covers(interval: IoV, point: ExpRun) -> bool:
    """Whether the IoV holds the run, written out from the conventions (the reference)."""
    if (point.exp, point.run) < (interval.exp_low, interval.run_low):
        return False
    if interval.exp_high == -1 or point.exp < interval.exp_high:
        return True
    if point.exp > interval.exp_high:
        return False
    return interval.run_high == -1 or point.run <= interval.run_high


_examples = itertools.count()


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(first=disjoint_iovs(), second=disjoint_iovs())
def test_lookup_matches_a_brute_force_reference(
    store: ConditionsStore, first: list[IoV], second: list[IoV]
) -> None:
    number = next(_examples)
    chain = [f"first_{number}", f"second_{number}"]
    contents = dict(zip(chain, [first, second], strict=True))
    for tag, iovs in contents.items():
        store.create_tag(tag)
        store.write_iovs(
            tag, [new("P", f"{tag} {i}", str(v)) for i, v in enumerate(iovs)], state=OPEN
        )
    for point in PROBES:
        expected = [
            (tag, md5sum(f"{tag} {i}".encode()))
            for tag, iovs in contents.items()
            for i, v in enumerate(iovs)
            if covers(v, point)
        ]
        try:
            found = store.lookup(chain, "P", point)
            got = [(found.tag, found.payload.checksum)]
        except NoPayloadValid:
            got = []
        assert got == expected[:1], f"at {point}"


# --- the embedded store only --------------------------------------------------------------
def test_payload_files_are_content_addressed(sql_store: EmbeddedStore) -> None:
    sql_store.create_tag("gt")
    sql_store.write_iovs(
        "gt", [new("A", "same", "1,0,1,9"), new("B", "same", "1,0,1,9")], state=OPEN
    )
    checksum = md5sum(b"same")
    path = sql_store.payload_dir / checksum[:2] / checksum
    assert sql_store.payload_file(checksum) == path
    assert path.read_bytes() == b"same"
    assert [p for p in sql_store.payload_dir.rglob("*") if p.is_file()] == [path]
    sql_store.set_state("gt", TagState.TESTING)
    with pytest.raises(ForbiddenChange):
        sql_store.write_iovs("gt", [new("A", "refused", "2,0,2,9")], state=OPEN)
    assert not sql_store.payload_file(md5sum(b"refused")).exists()
    with pytest.raises(CdbError, match="not an md5"):
        sql_store.payload_file("../../etc/passwd")


def test_a_changed_payload_file_is_refused_and_repaired(sql_store: EmbeddedStore) -> None:
    sql_store.create_tag("gt")
    sql_store.write_iovs("gt", [new("A", "good", "1,0,1,9")], state=OPEN)
    payload = sql_store.payload("A", 1)
    path = sql_store.payload_file(payload.checksum)
    path.write_bytes(b"tampered")
    with pytest.raises(ChecksumMismatch, match=f"{path}.*changed on disk"):
        sql_store.payload_data(payload)
    path.unlink()
    with pytest.raises(CdbError, match=f"missing: {path}"):
        sql_store.payload_data(payload)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"tampered")
    # same payload, uploaded again
    sql_store.write_iovs("gt", [new("A", "good", "2,0,2,9")], state=OPEN)
    assert sql_store.payload_data(payload) == b"good"


def test_schema_from_migrations_matches_the_models(sql_store: EmbeddedStore) -> None:
    with sql_store.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        assert compare_metadata(context, metadata) == []
        head = MIGRATIONS.head()
        assert context.get_current_revision() == head
    sql_store.create_tag("kept")
    upgrade(SqlDatabase(sql_store.url, LABEL), MIGRATIONS)  # idempotent
    with EmbeddedStore(sql_store.url, sql_store.payload_dir) as again:
        assert [t.name for t in again.tags()] == ["kept"]


def test_a_schema_newer_than_this_b2cal_is_refused(sql_store: EmbeddedStore) -> None:
    with sql_store.engine.begin() as connection:
        connection.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = 'f00d'"))
    with pytest.raises(DatabaseError, match="schema revision 'f00d', unknown to this b2cal"):
        EmbeddedStore(sql_store.url, sql_store.payload_dir)


def test_provenance_must_be_json(sql_store: EmbeddedStore) -> None:
    sql_store.create_tag("gt")
    with pytest.raises(CdbError, match="provenance of payload A is not JSON"):
        sql_store.write_iovs("gt", [new("A", "a", "1,0,1,9", when=object())], state=OPEN)
    with pytest.raises(CdbError, match="provenance query is not JSON"):
        sql_store.find_payloads(when=object())
    assert sql_store.find_payloads() == []


def _open_and_upload(url: str, payload_dir: Path, number: int, barrier: Any, count: int) -> None:
    """One of two processes: open a new database, then upload the same payloads as the other."""
    barrier.wait(timeout=20)
    with EmbeddedStore(url, payload_dir) as store:
        store.create_tag(f"own_{number}")
        if number == 0:
            store.create_tag("shared")
        barrier.wait(timeout=20)
        for i in range(count):
            entries = [new("Race", f"payload {i}", f"1,{i},1,{i}")]
            store.write_iovs(f"own_{number}", entries, state=OPEN)
            store.write_iovs("shared", entries, state=OPEN)


@pytest.mark.parametrize("kind", SQL_STORES)
def test_two_processes_open_and_upload_at_once(kind: str, tmp_path: Path) -> None:
    """A new database is migrated once; each payload is stored once, with one revision."""
    count = 8
    payloads = tmp_path / "payloads"
    with database_url(kind, tmp_path) as url:
        context = multiprocessing.get_context("fork")
        barrier = context.Barrier(2)
        workers = [
            context.Process(target=_open_and_upload, args=(url, payloads, n, barrier, count))
            for n in range(2)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=60)
        assert [w.exitcode for w in workers] == [0, 0]
        with EmbeddedStore(url, payloads) as store:
            stored = store.find_payloads("Race")
            assert [p.revision for p in stored] == list(range(1, count + 1))
            expected = {md5sum(f"payload {i}".encode()) for i in range(count)}
            assert {p.checksum for p in stored} == expected
            assert {t.name: len(store.iovs(t.name)) for t in store.tags()} == {
                "own_0": count,
                "own_1": count,
                "shared": count,
            }


@pytest.mark.unit  # no server: refusals, rules, files
@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql+psycopg://postgres:secret@127.0.0.1:1/cdb", "postgres:***@127.0.0.1:1/cdb"),
        ("mysql+pymysql://root:secret@127.0.0.1:1/cdb", "root:***@127.0.0.1:1/cdb"),
        ("nonsense", "not a database URL"),
        ("oracle+nodriver://u:secret@host/db", "u:***@host/db"),
    ],
)
def test_an_unusable_database_is_one_clear_line(url: str, expected: str, tmp_path: Path) -> None:
    with pytest.raises(DatabaseError) as raised:
        EmbeddedStore(url, tmp_path)
    message = str(raised.value)
    assert expected in message and "secret" not in message and "\n" not in message
