"""What the dashboard's pages are made of, without a browser: the overview's cost (a fixed
number of queries whatever the matrix size), the trend with its drift flags, and who a
request is: the certificate its TLS front passed on, or the development user."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from pki import PKI
from sqlalchemy import event

from b2cal.auth.proxied import again, identity_from_front, identity_over_tcp
from b2cal.auth.trust import TrustStore
from b2cal.db.database import StateDatabase
from b2cal.db.overview import Overview, calibration_history, overview
from b2cal.db.states import CalRunState
from b2cal.errors import NotAuthenticated
from b2cal.processing.trends import tolerance_of, trend
from b2cal.sites import RequestKind

pytestmark = pytest.mark.unit

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


def test_identity_over_tcp_is_the_development_user_and_never_a_header() -> None:
    local = identity_over_tcp({}, "/DC=org/CN=Dev")
    assert (local.dn, local.via) == ("/DC=org/CN=Dev", "local")
    for header in ("X-SSL-Client-Verify", "x-ssl-client-cert", "X-SSL-Client-S-DN"):
        with pytest.raises(NotAuthenticated, match="over TCP"):
            identity_over_tcp({header: "SUCCESS"}, "/DC=org/CN=Dev")
    with pytest.raises(NotAuthenticated, match="needs --user"):
        identity_over_tcp({}, None)


def test_the_fronts_headers_are_judged_by_the_certificate_they_carry(tmp_path: Path) -> None:
    pki = PKI(tmp_path)
    trust = TrustStore.load([pki.ca_file], [pki.crl_file])
    ada = pki.user("Ada Front")
    escaped = quote(ada.cert.public_bytes(Encoding.PEM).decode())
    sent = {"x-ssl-client-verify": "SUCCESS", "x-ssl-client-cert": escaped}
    who = identity_from_front(sent, trust, "belle")
    assert (who.dn, who.via) == ("/DC=org/DC=b2cal-test/CN=Users/CN=Ada Front", "certificate")
    assert again(who, trust, "belle") == who
    cases = [
        ({}, "no certificate identity"),
        ({**sent, "x-ssl-client-verify": "FAILED:certificate revoked"},
         "did not verify the certificate (FAILED:certificate revoked)"),
        ({"X-SSL-Client-Verify": "SUCCESS"}, "did not pass it on"),
        ({**sent, "x-ssl-client-cert": "not%20a%20certificate"}, "no readable certificate"),
    ]  # fmt: skip
    for headers, reason in cases:
        with pytest.raises(NotAuthenticated, match=re.escape(reason)):
            identity_from_front(headers, trust, "belle")
    pki.revoke(ada)  # the same identity, judged again with the new CRL
    with pytest.raises(NotAuthenticated, match="was revoked"):
        again(who, TrustStore.load([pki.ca_file], [pki.crl_file]), "belle")
