"""What the dashboard's pages are made of, without a browser: the overview's cost (a fixed
number of queries whatever the matrix size), the trend with its drift flags, and who a
request is from the identity headers of the TLS front."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import event

from b2cal.auth.proxied import identity_from_front
from b2cal.db.database import StateDatabase
from b2cal.db.overview import Overview, calibration_history, overview
from b2cal.db.states import CalRunState
from b2cal.errors import NotAuthenticated
from b2cal.processing.trends import tolerance_of, trend
from b2cal.sites import RequestKind

S = CalRunState


@pytest.fixture
def db(tmp_path: Path) -> Iterator[StateDatabase]:
    with StateDatabase(f"sqlite:///{tmp_path / 'state.db'}") as opened:
        yield opened


def fill(db: StateDatabase, buckets: int, calibrations: int) -> None:
    """``buckets`` prompt requests (each of its own bucket) × ``calibrations`` runs."""
    from b2cal.db.schema import BucketRow, now

    names = tuple(f"Cal{i:02d}" for i in range(calibrations))
    for number in range(1, buckets + 1):

        def add_bucket(session, number=number):  # type: ignore[no-untyped-def]
            row = BucketRow(site="local", exp=1, number=number, first_run=number,
                            last_run=number, state="CLOSED", opened=now(),
                            late_files=0)  # fmt: skip
            session.add(row)
            session.flush()
            return row.id

        bucket_id = db.write(add_bucket)
        request = db.create_request(
            kind=RequestKind.PROMPT, site="local", exp=1, run_low=number, run_high=number,
            calibrations=names, input_tags=["base"], actor="test", bucket_id=bucket_id,
        )  # fmt: skip
        for calrun in db.start_request(request.id)[: calibrations // 2]:
            db.move(calrun.id, S.COLLECTING)


def queries_of(db: StateDatabase, work: object) -> int:
    count = [0]

    def counted(*_: object) -> None:
        count[0] += 1

    event.listen(db.engine, "before_cursor_execute", counted)
    try:
        work()  # type: ignore[operator]
    finally:
        event.remove(db.engine, "before_cursor_execute", counted)
    return count[0]


def test_the_overview_costs_the_same_few_queries_at_any_size(tmp_path: Path) -> None:
    costs = {}
    for buckets, calibrations in ((2, 2), (50, 20)):
        with StateDatabase(f"sqlite:///{tmp_path / f'{buckets}.db'}") as db:
            fill(db, buckets, calibrations)
            shown: list[Overview] = []
            costs[buckets] = queries_of(db, lambda db=db, shown=shown: shown.append(overview(db)))
            (data,) = shown
            assert len(data.rows) == buckets
            assert len(data.calibrations) == calibrations
            assert data.rows[0].label == f"e1 bucket {buckets}"  # newest first
            assert sum(len(r.cells) for r in data.rows) == buckets * calibrations
    # requests, their runs, their buckets, the open buckets (and the transaction's start)
    assert costs[2] == costs[50] <= 5, costs


def test_a_constant_moving_beyond_its_tolerance_is_flagged(db: StateDatabase) -> None:
    means = [1.0, 1.2, 3.0, 3.1]  # the third bucket jumps by 1.8 > 0.5
    for number, mean in enumerate(means, start=1):
        request = db.create_request(
            kind=RequestKind.PROMPT, site="local", exp=1, run_low=number, run_high=number,
            calibrations=("ChannelT0",), input_tags=["base"], actor="test",
        )  # fmt: skip
        (calrun,) = db.start_request(request.id)
        for state in (S.COLLECTING, S.ALGORITHM, S.VALIDATING):
            db.move(calrun.id, state)
        fields = [{"iov": "a", "field": "t0", "mean": mean - 0.1},
                  {"iov": "b", "field": "t0", "mean": mean + 0.1}]  # fmt: skip
        db.move(calrun.id, S.AWAITING_SIGNOFF, summary={"fields": fields})
    points = calibration_history(db, "ChannelT0")
    assert [p.label for p in points] == ["request 1", "request 2", "request 3", "request 4"]
    values = trend("ChannelT0", points, {"ChannelT0.t0": 0.5})
    assert [round(v.mean, 6) for v in values] == means
    assert [v.drift for v in values] == [False, False, True, False]
    assert values[2].step == pytest.approx(1.8)
    assert not any(v.drift for v in trend("ChannelT0", points, {}))  # no tolerance: no flag
    assert tolerance_of("ChannelT0", "ChannelT0.t0", {"ChannelT0.t0": 0.5}) == 0.5  # as named
    assert tolerance_of("BeamSpot", "x", {"BeamSpot": 0.1}) == 0.1  # by calibration


PROXIES = ["127.0.0.2", "10.0.0.0/8"]
VERIFIED = {"X-SSL-Client-Verify": "SUCCESS", "X-SSL-Client-S-DN": "CN=Ada,OU=Users,DC=org"}


def test_identity_headers_are_believed_from_the_trusted_front_only() -> None:
    who = identity_from_front(VERIFIED, "127.0.0.2", PROXIES)
    assert (who.dn, who.via) == ("/DC=org/OU=Users/CN=Ada", "certificate")
    assert identity_from_front(VERIFIED, "10.1.2.3", PROXIES).dn == who.dn
    lower = {k.lower(): v for k, v in VERIFIED.items()}
    assert identity_from_front(lower, "127.0.0.2", PROXIES).dn == who.dn
    cases = [
        (VERIFIED, "127.0.0.1", "from 127.0.0.1, which is not a trusted proxy"),
        ({"X-SSL-Client-S-DN": "CN=Eve"}, "192.168.1.5", "not a trusted proxy"),
        ({**VERIFIED, "X-SSL-Client-Verify": "FAILED:certificate revoked"}, "127.0.0.2",
         "did not verify the certificate (FAILED:certificate revoked)"),
        ({"X-SSL-Client-Verify": "SUCCESS"}, "127.0.0.2", "passed no DN"),
        ({}, "127.0.0.2", "no certificate identity"),
        ({**VERIFIED, "X-SSL-Client-S-DN": "not a dn"}, "127.0.0.2", "unreadable DN"),
    ]  # fmt: skip
    for headers, peer, reason in cases:
        with pytest.raises(NotAuthenticated, match=reason.replace("(", r"\(").replace(")", r"\)")):
            identity_from_front(headers, peer, PROXIES)


def test_the_development_user_is_who_a_request_without_headers_is() -> None:
    local = identity_from_front({}, "127.0.0.1", PROXIES, local_user="/DC=org/CN=Dev")
    assert (local.dn, local.via) == ("/DC=org/CN=Dev", "local")
    with pytest.raises(NotAuthenticated, match="not a trusted proxy"):
        identity_from_front(VERIFIED, "127.0.0.1", PROXIES, local_user="/DC=org/CN=Dev")
