"""Discovery: files registered once they have settled, incrementally, into buckets; late files
flag their bucket; two scans at once register each file once (SQLite, PostgreSQL, MariaDB)."""

from __future__ import annotations

import shutil
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from b2cal.catalog.naming import data_file_path
from b2cal.db import discovery
from b2cal.db.database import StateDatabase
from b2cal.db.states import BucketState, FileStatus
from b2cal.errors import SiteError, StateConflict
from b2cal.sites import BucketRule, RequestKind, Site, load_site
from b2cal.toy.generate import generate_toy


class Clock:
    """A clock the test moves by hand (settling is about time)."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def site(storage: Path, tmp_path: Path, **changes: object) -> Site:
    values: dict[str, object] = {
        "name": "lab",
        "storage_roots": [storage],
        "work_root": tmp_path / "work",
        "settle_seconds": 60,
        "buckets": BucketRule(runs=2),
    }
    values.update(changes)
    return Site(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def toy_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Runs 1-4 of experiment 1, one file per run and stream (copied by each test)."""
    storage = tmp_path_factory.mktemp("toy")
    generate_toy(storage, 1, [1, 2, 3, 4], files_per_run=1, events=50, seed=3)
    return storage


def copy_runs(toy: Path, storage: Path, runs: list[int]) -> None:
    for run in runs:
        for stream in ("bhabha", "mumu"):
            source = data_file_path(toy, 1, run, stream, 0)
            target = data_file_path(storage, 1, run, stream, 0)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def test_files_register_once_and_runs_fill_buckets(
    state_db: StateDatabase, toy_files: Path, tmp_path: Path
) -> None:
    storage = tmp_path / "storage"
    copy_runs(toy_files, storage, [1, 2, 3])
    lab, clock = site(storage, tmp_path), Clock()
    first = discovery.discover(state_db, lab, clock=clock)
    assert (first.seen, len(first.registered), first.settling) == (6, 6, 0)  # headers complete
    again = discovery.discover(state_db, lab, clock=clock)
    assert (again.seen, again.registered, again.late) == (6, [], [])
    one, two = discovery.buckets(state_db, "lab")
    assert (one.number, one.first_run, one.last_run, one.runs, one.state) == (
        1,
        1,
        2,
        2,
        BucketState.CLOSED,
    )
    assert (two.first_run, two.last_run, two.state) == (3, 3, BucketState.OPEN)
    assert [b.label for b in first.closed] == ["e1 bucket 1"]
    files = discovery.registered_files(state_db, "lab", 1, 1, 2, {"bhabha"})
    assert [(f.run, f.stream) for f in files] == [(1, "bhabha"), (2, "bhabha")]
    assert all(f.events == 50 for f in discovery.files(state_db, "lab", FileStatus.REGISTERED))


def test_a_growing_file_waits_until_it_has_settled(
    state_db: StateDatabase, toy_files: Path, tmp_path: Path
) -> None:
    storage = tmp_path / "storage"
    whole = data_file_path(toy_files, 1, 1, "bhabha", 0).read_bytes()
    target = data_file_path(storage, 1, 1, "bhabha", 0)
    target.parent.mkdir(parents=True)
    target.write_bytes(whole[: len(whole) // 2])  # a copy under way: the header says more
    lab, clock = site(storage, tmp_path), Clock()
    assert discovery.discover(state_db, lab, clock=clock).settling == 1
    clock.advance(59)
    assert discovery.discover(state_db, lab, clock=clock).settling == 1
    with target.open("ab") as handle:  # it grows: the clock starts again
        handle.write(whole[len(whole) // 2 : -100])
    clock.advance(30)
    assert discovery.discover(state_db, lab, clock=clock).settling == 1
    clock.advance(45)
    assert discovery.discover(state_db, lab, clock=clock).settling == 1
    target.write_bytes(whole)  # complete now: registered at once, header and size agree
    report = discovery.discover(state_db, lab, clock=clock)
    assert report.registered == [str(target)]


def test_a_settled_file_that_cannot_be_read_is_marked_bad(
    state_db: StateDatabase, toy_files: Path, tmp_path: Path
) -> None:
    storage = tmp_path / "storage"
    copy_runs(toy_files, storage, [1])
    broken = data_file_path(storage, 1, 1, "mumu", 0)
    broken.write_bytes(b"not a root file")
    lab, clock = site(storage, tmp_path), Clock()
    assert discovery.discover(state_db, lab, clock=clock).settling == 1
    clock.advance(61)
    report = discovery.discover(state_db, lab, clock=clock)
    assert len(report.bad) == 1 and str(broken) in report.bad[0]
    (bad,) = discovery.files(state_db, "lab", FileStatus.BAD)
    assert bad.path == str(broken) and bad.reason
    assert discovery.discover(state_db, lab, clock=clock).bad == []  # said once


def test_late_files_flag_their_closed_bucket(
    state_db: StateDatabase, toy_files: Path, tmp_path: Path
) -> None:
    storage = tmp_path / "storage"
    copy_runs(toy_files, storage, [1, 2])
    lab, clock = site(storage, tmp_path), Clock()
    discovery.discover(state_db, lab, clock=clock)
    (bucket,) = discovery.buckets(state_db)
    assert bucket.state is BucketState.CLOSED  # full and nothing settling
    extra = data_file_path(storage, 1, 2, "bhabha", 1)
    shutil.copy2(data_file_path(storage, 1, 2, "bhabha", 0), extra)
    report = discovery.discover(state_db, lab, clock=clock)
    assert (report.late, report.registered) == ([str(extra)], [])
    (flagged,) = discovery.buckets(state_db)
    assert (flagged.late_files, flagged.runs) == (1, 2)
    # a file of another experiment's run under this run's folder is bad, not late
    wrong = data_file_path(storage, 1, 1, "mumu", 3)
    shutil.copy2(data_file_path(storage, 1, 2, "mumu", 0), wrong)
    (bad,) = discovery.discover(state_db, lab, clock=clock).bad
    assert "metadata says run=2 but the name says run=1" in bad


def test_buckets_close_by_window_or_by_hand(
    state_db: StateDatabase, toy_files: Path, tmp_path: Path
) -> None:
    storage = tmp_path / "storage"
    copy_runs(toy_files, storage, [1, 2, 3])
    lab, clock = site(storage, tmp_path, buckets=BucketRule(window_hours=24)), Clock()
    report = discovery.discover(state_db, lab, clock=clock)
    assert report.closed == []
    (bucket,) = discovery.buckets(state_db)
    assert (bucket.first_run, bucket.last_run, bucket.runs) == (1, 3, 3)
    clock.advance(24 * 3600)
    (closed,) = discovery.discover(state_db, lab, clock=clock).closed
    assert closed.id == bucket.id
    with pytest.raises(StateConflict, match="bucket 1 of experiment 1 is CLOSED"):
        discovery.close_bucket(state_db, "lab", 1, 1, "/CN=Ada")


def test_closing_a_bucket_by_hand(state_db: StateDatabase, toy_files: Path, tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    copy_runs(toy_files, storage, [1])
    discovery.discover(state_db, site(storage, tmp_path), clock=Clock())
    closed = discovery.close_bucket(state_db, "lab", 1, 1, "/CN=Ada")
    assert closed.state is BucketState.CLOSED
    assert state_db.actions()[0].action == "bucket close"
    request = state_db.create_request(
        kind=load_site("local").request_kinds[0],
        site="lab",
        exp=1,
        run_low=1,
        run_high=1,
        calibrations=["ChannelT0"],
        bucket_id=closed.id,
    )
    assert discovery.bucket(state_db, closed.id).state is BucketState.PROCESSING
    with pytest.raises(StateConflict, match="a request is processing it already"):
        state_db.create_request(
            kind=request.kind,
            site="lab",
            exp=1,
            run_low=1,
            run_high=1,
            calibrations=["ChannelT0"],
            bucket_id=closed.id,
        )


def test_two_scans_at_once_register_each_file_once(
    state_db: StateDatabase, toy_files: Path, tmp_path: Path
) -> None:
    storage = tmp_path / "storage"
    copy_runs(toy_files, storage, [1, 2, 3, 4])
    lab = site(storage, tmp_path)
    url = state_db.database.url
    reports: list[discovery.ScanReport] = []
    barrier = threading.Barrier(2)

    def scan() -> None:
        with StateDatabase(url) as db:
            barrier.wait(timeout=10)
            reports.append(discovery.discover(db, lab, clock=Clock()))

    threads = [threading.Thread(target=scan) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    registered = [path for report in reports for path in report.registered]
    assert sorted(registered) == sorted(set(registered)) and len(registered) == 8
    assert len(discovery.files(state_db, "lab", FileStatus.REGISTERED)) == 8
    assert [(b.first_run, b.last_run) for b in discovery.buckets(state_db)] == [(1, 2), (3, 4)]


@pytest.mark.unit  # no server: refusals, rules, files
def test_site_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("B2CAL_HOME", str(tmp_path))
    local = load_site("local")
    assert local.storage_roots == [tmp_path / "storage"]
    assert local.request_folder(17) == tmp_path / "work" / "requests" / "17"
    assert load_site("bnl").signoff_policy("BeamSpot").value == "auto"
    assert load_site("bnl").signoff_policy("ChannelT0").value == "expert"
    monkeypatch.setenv("B2CAL_SITE_BACKEND__WORKERS", "7")
    assert load_site("local").backend.workers == 7
    monkeypatch.setenv("B2CAL_SITE_BACKEND__WORKERS", "many")
    with pytest.raises(SiteError, match=r"local.toml \[backend.workers\]"):
        load_site("local")
    with pytest.raises(SiteError, match="known sites: bnl, desy, local"):
        load_site("cern")
    bad = tmp_path / "sites"
    bad.mkdir()
    (bad / "x.toml").write_text("storage_roots = [\n")
    monkeypatch.setenv("B2CAL_SITES_DIR", str(bad))
    with pytest.raises(SiteError, match=r"site x: .*x\.toml"):
        load_site("x")
    (bad / "y.toml").write_text(
        'storage_roots = []\nwork_root = "/w"\n[buckets]\nruns = 1\nwindow_hours = 2\n'
    )
    with pytest.raises(SiteError, match="exactly one of runs and window_hours"):
        load_site("y")


def test_a_full_bucket_waits_for_its_settling_files_before_it_closes(
    state_db: StateDatabase, toy_files: Path, tmp_path: Path
) -> None:
    storage = tmp_path / "storage"
    copy_runs(toy_files, storage, [1, 2, 3])
    growing = data_file_path(storage, 1, 2, "mumu", 0)
    whole = growing.read_bytes()
    growing.write_bytes(whole[: len(whole) // 2])  # still being copied
    lab, clock = site(storage, tmp_path), Clock()
    report = discovery.discover(state_db, lab, clock=clock)
    assert report.closed == [] and report.settling == 1
    assert [(b.first_run, b.last_run, b.state) for b in discovery.buckets(state_db)] == [
        (1, 2, BucketState.OPEN),  # full, but run 2 has a file still settling
        (3, 3, BucketState.OPEN),
    ]
    growing.write_bytes(whole)
    report = discovery.discover(state_db, lab, clock=clock)
    assert report.late == [] and report.registered == [str(growing)]
    assert [b.label for b in report.closed] == ["e1 bucket 1"]


def test_sites_sharing_a_state_database_keep_their_own_buckets(
    state_db: StateDatabase, toy_files: Path, tmp_path: Path
) -> None:
    copy_runs(toy_files, tmp_path / "a", [1, 2])
    copy_runs(toy_files, tmp_path / "b", [3, 4])
    discovery.discover(state_db, site(tmp_path / "a", tmp_path, name="bnl"), clock=Clock())
    discovery.discover(state_db, site(tmp_path / "b", tmp_path, name="desy"), clock=Clock())
    assert [(b.site, b.number, b.first_run, b.last_run) for b in discovery.buckets(state_db)] == [
        ("bnl", 1, 1, 2),
        ("desy", 1, 3, 4),
    ]


def test_a_bad_file_that_is_replaced_is_registered(
    state_db: StateDatabase, toy_files: Path, tmp_path: Path
) -> None:
    storage = tmp_path / "storage"
    copy_runs(toy_files, storage, [1])
    target = data_file_path(storage, 1, 1, "mumu", 0)
    good = target.read_bytes()
    target.write_bytes(b"broken transfer")
    lab, clock = site(storage, tmp_path), Clock()
    discovery.discover(state_db, lab, clock=clock)
    clock.advance(61)
    assert len(discovery.discover(state_db, lab, clock=clock).bad) == 1
    target.write_bytes(good)  # the transfer is redone
    assert discovery.discover(state_db, lab, clock=clock).registered == [str(target)]


def test_a_cancelled_request_holds_its_bucket_for_a_person(
    state_db: StateDatabase, toy_files: Path, tmp_path: Path
) -> None:
    """Cancelled on purpose: the bucket is HELD (discovery leaves it; a person may make its
    next request). Not started (its run could not be created): CLOSED, discovery tries again.
    The bucket's state says which, not the requests' message text."""
    storage = tmp_path / "storage"
    copy_runs(toy_files, storage, [1, 2])
    discovery.discover(state_db, site(storage, tmp_path), clock=Clock())
    (bucket,) = discovery.buckets(state_db)
    assert discovery.awaiting_request(state_db, "lab") == [bucket]

    def request() -> int:
        return state_db.create_request(
            kind=RequestKind.PROMPT, site="lab", exp=1, run_low=1, run_high=2,
            calibrations=["ChannelT0"], bucket_id=bucket.id,
        ).id  # fmt: skip

    def state() -> BucketState:
        return discovery.bucket(state_db, bucket.id).state

    first = request()
    assert (state(), discovery.awaiting_request(state_db, "lab")) == (BucketState.PROCESSING, [])
    state_db.cancel_request(first, "/CN=Ada")
    assert (state(), discovery.awaiting_request(state_db, "lab")) == (BucketState.HELD, [])
    second = request()  # by hand
    assert second != first and state() is BucketState.PROCESSING
    state_db.cancel_request(second, "b2cal", started=False)
    assert state() is BucketState.CLOSED
    assert [b.id for b in discovery.awaiting_request(state_db, "lab")] == [bucket.id]


@pytest.mark.unit  # SQLite, the command line
def test_a_buckets_prompt_request_calibrates_what_the_site_names(
    toy_files: Path, tmp_path: Path
) -> None:
    """The site's ``prompt_calibrations`` (here through the environment, as a site file
    would say it), with what they depend on added."""
    from cli import b2cal_inline

    home = tmp_path / "home"
    copy_runs(toy_files, home / "storage", [1, 2])
    env = {"B2CAL_HOME": str(home), "B2CAL_SITE_SETTLE_SECONDS": "0",
           "B2CAL_SITE_BUCKETS__RUNS": "2"}  # fmt: skip
    found = b2cal_inline("discover", env=env)
    assert "closed e1 bucket 1" in found.stdout, found.stdout + found.stderr
    create = ["request", "create", "--bucket", "1", "--exp", "1", "--dry-run"]
    planned = b2cal_inline(*create, env={**env, "B2CAL_SITE_PROMPT_CALIBRATIONS": '["BeamSpot"]'})
    assert planned.returncode == 0, planned.stderr
    assert "(pool local): ModuleAlignment, BeamSpot" in planned.stdout
    default = b2cal_inline(*create, env=env)
    assert "(pool local): ChannelT0, ChannelGain, ModuleAlignment, BeamSpot" in default.stdout


@pytest.mark.unit  # SQLite: the migration's SQL is plain
def test_the_migration_holds_the_buckets_whose_request_was_cancelled_on_purpose(
    toy_files: Path, tmp_path: Path
) -> None:
    """Revision 0004: buckets CLOSED with a request that was cancelled on purpose become
    HELD; one whose request could not be started stays CLOSED."""
    from alembic import command
    from sqlalchemy import create_engine, text

    from b2cal.db.schema import MIGRATIONS
    from b2cal.requests.operations import NOT_STARTED

    url = f"sqlite:///{tmp_path / 'state.sqlite'}"
    storage = tmp_path / "storage"
    copy_runs(toy_files, storage, [1, 2, 3, 4])
    with StateDatabase(url) as db:
        discovery.discover(db, site(storage, tmp_path), clock=Clock())
        held, retried = discovery.buckets(db)
        for bucket, started in ((held, True), (retried, False)):
            made = db.create_request(
                kind=RequestKind.PROMPT, site="lab", exp=1, run_low=bucket.first_run,
                run_high=bucket.last_run, calibrations=["ChannelT0"], bucket_id=bucket.id,
            )  # fmt: skip
            db.cancel_request(made.id, "/CN=Ada", started=started)
            if not started:
                db.finish_request(made.id, NOT_STARTED)
    command.downgrade(MIGRATIONS.config(url), "0003")  # as a database of revision 0003 was
    engine = create_engine(url)
    with engine.connect() as connection:
        before = connection.execute(text("SELECT state FROM state_bucket ORDER BY id")).scalars()
        assert list(before) == ["CLOSED", "CLOSED"]
    engine.dispose()
    with StateDatabase(url) as db:  # opening it upgrades it
        states = [b.state for b in discovery.buckets(db)]
    assert states == [BucketState.HELD, BucketState.CLOSED]


@pytest.mark.unit  # SQLite, the command line
def test_a_bad_file_is_listed_with_its_reason_and_its_mark_cleared_by_a_person(
    toy_files: Path, tmp_path: Path
) -> None:
    from cli import assert_one_line_error, b2cal_inline

    home = tmp_path / "home"
    copy_runs(toy_files, home / "storage", [1, 2])
    env = {"B2CAL_HOME": str(home), "B2CAL_SITE_SETTLE_SECONDS": "0"}
    assert b2cal_inline("discover", env=env).returncode == 0
    assert "no bad files at site local" in b2cal_inline("files", "bad", env=env).stdout
    with StateDatabase(f"sqlite:///{home / 'state.sqlite'}") as db:
        path = discovery.files(db, "local", FileStatus.REGISTERED)[0].path
        assert discovery.mark_bad(db, "local", path, "truncated (it broke a collector)", "b2cal")
    listed = b2cal_inline("files", "bad", "--json", env=env)
    assert '"reason": "truncated (it broke a collector)"' in listed.stdout, listed.stderr
    cleared = b2cal_inline("files", "clear", path, env=env)
    assert cleared.returncode == 0 and "mark cleared" in cleared.stdout, cleared.stderr
    with StateDatabase(f"sqlite:///{home / 'state.sqlite'}") as db:
        assert [a.action for a in db.actions(limit=2)] == ["clear bad", "mark bad"]
    assert b2cal_inline("discover", env=env).returncode == 0  # read again: the file is good
    with StateDatabase(f"sqlite:///{home / 'state.sqlite'}") as db:
        assert discovery.files(db, "local", FileStatus.BAD) == []
    assert_one_line_error(b2cal_inline("files", "clear", path, env=env), "is REGISTERED")
