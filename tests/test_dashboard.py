"""The dashboard behind a real nginx on loopback (the project's own configuration) with a test
PKI: which certificates get in, that identity headers count only from the front, and a real
browser (Playwright driving Debian's Chromium, with a client certificate) reading the pages
and acting — allowed and refused. Screenshots are kept in the test's folder."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from browser import pages_for
from cli import b2cal
from dashboard_server import served_dashboard
from nginx_front import FRONT_SECRET, PROXY_ADDRESS, nginx_front
from pki import PKI, Issued

from b2cal.auth.names import grid_dn
from b2cal.auth.tls import client_context
from b2cal.cdb.connect import open_store
from b2cal.db import users
from b2cal.db.database import StateDatabase
from b2cal.db.states import CalRunState
from b2cal.sites import RequestKind, load_site

S = CalRunState


@dataclass
class Front:
    pki: PKI
    url: str
    app_url: str
    people: dict[str, Issued]
    calruns: dict[str, int]
    db_url: str
    folder: Path
    log: Any

    def db(self) -> StateDatabase:
        return StateDatabase(self.db_url, create=False)


def dn(issued: Issued) -> str:
    return grid_dn(issued.cert.subject)


def _populate(db: StateDatabase, people: dict[str, Issued]) -> dict[str, int]:
    members = [
        users.Member(dn(people["ada"]), grants=[{"role": "expert", "calibrations": ["ChannelT0"]}]),
        users.Member(dn(people["vic"]), grants=[{"role": "viewer", "calibrations": []}]),
    ]
    users.sync(db, members, "test")
    request = db.create_request(
        kind=RequestKind.PROMPT, site="local", exp=1, run_low=1, run_high=4,
        calibrations=("ChannelT0", "ChannelGain"), input_tags=["base"], actor="test",
    )  # fmt: skip
    found = {}
    for calrun in db.start_request(request.id):
        for state in (S.COLLECTING, S.ALGORITHM, S.VALIDATING):
            db.move(calrun.id, state)
        field = {"iov": "1,1,1,4", "field": "t0", "size": 64, "mean": 1.5, "min": 0.0,
                 "max": 3.0, "change": 0.1, "max_abs_pull": 1.2}  # fmt: skip
        summary = {"passed": True, "problems": [], "reference_tag": "running", "plots": [],
                   "fields": [field]}  # fmt: skip
        db.move(calrun.id, S.AWAITING_SIGNOFF, summary=summary)
        found[calrun.calibration] = calrun.id
    return found


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    folder = tmp_path_factory.mktemp("dashboard")
    pki = PKI(folder / "pki")
    host = pki.host("localhost")
    people = pki.cast()
    env = {
        **os.environ,
        "B2CAL_HOME": str(folder / "home"),
        "B2CAL_TRUSTED_PROXIES": f'["{PROXY_ADDRESS}"]',
        "B2CAL_FRONT_SECRET": FRONT_SECRET,
    }
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("B2CAL_HOME", env["B2CAL_HOME"])
        url = load_site("local").state_database_url
        with StateDatabase(url) as db:
            calruns = _populate(db, people)
        with open_store(load_site("local").cdb_database_url) as store:
            store.create_tag("staging-prompt-1")  # what starting the request makes
    with served_dashboard(env, "--site", "local") as app:
        app_port = app.port
        with nginx_front(folder, host.cert_path, host.key_path, pki.ca_file, pki.crl_file, app_port) as port:  # noqa: E501  # fmt: skip
            # the dashboard takes websockets only from pages under the host browsers see
            yield Front(pki, f"https://127.0.0.1:{port}", f"http://127.0.0.1:{app_port}",
                        people, calruns, url, folder, app)  # fmt: skip


def get(front: Front, who: Issued, path: str, **headers: str) -> httpx.Response:
    context = client_context(who.cert_path, who.key_path, front.pki.ca_file)
    with httpx.Client(verify=context, timeout=30) as client:
        return client.get(front.url + path, headers=headers)


def test_nginx_lets_in_valid_user_certificates_only(front: Front) -> None:
    assert get(front, front.people["ada"], "/overview").status_code == 200
    for name in ("rex", "old", "early", "mallory"):
        answer = get(front, front.people[name], "/overview")
        assert answer.status_code == 400, name  # nginx's "The SSL certificate error"
        assert "SSL certificate error" in answer.text or "certificate" in answer.text.lower()


def test_identity_headers_count_only_from_the_front(front: Front) -> None:
    # Through nginx, a header the client wrote is replaced by nginx's own.
    answer = get(front, front.people["ada"], "/denied", **{"X-SSL-Client-S-DN": "CN=Cora,DC=org"})
    assert answer.status_code == 200 and dn(front.people["ada"]) in answer.text
    # Straight to the dashboard, the same headers from an address that is not the front.
    forged = {"X-SSL-Client-Verify": "SUCCESS", "X-SSL-Client-S-DN": "CN=Cora,DC=org"}
    direct = httpx.get(front.app_url + "/overview", headers=forged, follow_redirects=True)
    assert direct.status_code == 401
    assert "which is not a trusted proxy" in direct.text
    bare = httpx.get(front.app_url + "/overview", follow_redirects=True)
    assert bare.status_code == 401 and "no certificate identity" in bare.text
    # From the front's own address, but without the secret only nginx knows.
    as_front = httpx.HTTPTransport(local_address=PROXY_ADDRESS)
    with httpx.Client(transport=as_front, follow_redirects=True) as client:
        spoofed = client.get(front.app_url + "/overview", headers=forged)
        assert spoofed.status_code == 401
        assert "without the front&#x27;s shared secret" in spoofed.text
        signed = client.get(
            front.app_url + "/denied", headers={**forged, "X-B2CAL-Front": FRONT_SECRET}
        )
        assert "you are /DC=org/CN=Cora" in signed.text  # the secret and the address: believed
    assert "refused 127.0.0.1 /overview" in front.log.log()


@pytest.fixture
def browser_as(front: Front) -> Iterator[Any]:
    """A Chromium page presenting a person's certificate to nginx."""
    with pages_for(front.url) as page_of:
        yield page_of


def test_a_browser_reads_the_overview_and_a_calibration_run(
    front: Front, browser_as: Any, tmp_path: Path
) -> None:
    page = browser_as(front.people["vic"])
    page.goto(front.url + "/overview")
    page.wait_for_selector("#matrix", timeout=30000)
    assert dn(front.people["vic"]) in page.inner_text("#who")
    cell = page.locator(f"#calrun-{front.calruns['ChannelT0']}")
    assert "AWAITING_SIGNOFF" in cell.inner_text()
    page.screenshot(path=str(tmp_path / "overview.png"), full_page=True)
    cell.locator("a").click()
    page.wait_for_selector("#calrun-state", timeout=30000)
    page.get_by_text("ChannelT0 · calibration run").wait_for()  # Panel renders in shadow DOM
    assert "validation passed" in page.inner_text("#validation")
    page.screenshot(path=str(tmp_path / "calrun.png"), full_page=True)


def test_an_action_the_roles_do_not_allow_is_refused_in_the_page_and_logged(
    front: Front, browser_as: Any, tmp_path: Path
) -> None:
    page = browser_as(front.people["ada"])  # an expert of ChannelT0, not of ChannelGain
    target = front.calruns["ChannelGain"]
    page.goto(front.url + f"/calrun?id={target}")
    page.get_by_role("button", name="Approve").click()
    refusal = page.get_by_text("may not sign off")
    refusal.wait_for(timeout=30000)
    assert "expert of ChannelGain" in (refusal.text_content() or "")
    page.screenshot(path=str(tmp_path / "refused.png"), full_page=True)
    with front.db() as db:
        assert db.calibration_run(target).state is S.AWAITING_SIGNOFF
        refused = [a for a in db.actions() if a.actor == dn(front.people["ada"])]
        assert refused and refused[0].outcome == "refused"


def test_a_stale_page_cannot_approve_what_it_did_not_show(
    front: Front, browser_as: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ada's page shows attempt 1 waiting; meanwhile it is rejected and rerun (attempt 2):
    her Approve is refused, nothing changes."""
    from b2cal.db.states import SignoffDecision
    from b2cal.orchestration.requests import rerun_calibration

    monkeypatch.setenv("B2CAL_HOME", str(front.folder / "home"))  # the site the rerun is at
    target = front.calruns["ChannelT0"]
    page = browser_as(front.people["ada"])
    page.goto(front.url + f"/calrun?id={target}")
    page.get_by_role("button", name="Approve").wait_for()
    with front.db() as db:
        db.signoff(target, SignoffDecision.REJECT, "/DC=org/CN=Someone Else", "t0 jumps")
        rerun_calibration(db, target, "/DC=org/CN=Someone Else", start=False)
    page.get_by_role("button", name="Approve").click()
    refusal = page.get_by_text("look at it again")
    try:
        refusal.wait_for()
    finally:
        page.screenshot(path=str(tmp_path / "stale.png"), full_page=True)
    with front.db() as db:
        now = db.calibration_run(target)
        assert (now.state, now.attempt) == (S.PLANNED, 2)
        assert [s.decision.value for s in db.signoffs(target)] == ["reject"]


def test_a_valid_certificate_without_a_role_sees_nothing(front: Front, browser_as: Any) -> None:
    page = browser_as(front.people["eve"])  # nginx lets her in; the registry knows her not
    page.goto(front.url + "/log")
    refusal = page.locator("#refusal")
    refusal.wait_for()
    assert "may not view" in (refusal.text_content() or "")
    unknown = browser_as(front.people["vic"])
    unknown.goto(front.url + "/calrun?id=<img src=x onerror=alert(1)>")
    shown = unknown.locator("#refusal")
    shown.wait_for()
    assert "<img" in (shown.text_content() or "")  # shown as text, not made an element
    assert unknown.locator("#refusal img").count() == 0


def test_the_development_user_is_refused_off_loopback() -> None:
    refused = b2cal("dashboard", "--host", "0.0.0.0", "--user", "/DC=org/CN=Dev")
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "error: --user is for development and needs a loopback address, not 0.0.0.0"
    )


def test_behind_a_front_the_dashboard_needs_its_shared_secret() -> None:
    refused = b2cal("dashboard", "--port", "0", env={"B2CAL_FRONT_SECRET": ""})
    assert refused.returncode == 1
    assert refused.stderr.strip().startswith("error: B2CAL_FRONT_SECRET is not set")


def test_the_overview_follows_the_state_database_live(front: Front, browser_as: Any) -> None:
    page = browser_as(front.people["vic"])
    page.goto(front.url + "/overview")
    page.wait_for_selector("#matrix", timeout=30000)
    with front.db() as db:  # a request made elsewhere after the page was shown
        request = db.create_request(
            kind=RequestKind.PROMPT, site="local", exp=2, run_low=1, run_high=2,
            calibrations=("BeamSpot",), input_tags=["base"], actor="test",
        )  # fmt: skip
        (calrun,) = db.start_request(request.id)
    # the page refreshes itself every 5 s from data at most 2 s old
    page.locator(f"#calrun-{calrun.id}").wait_for(timeout=20000)
    assert "PLANNED" in page.locator(f"#calrun-{calrun.id}").inner_text()
