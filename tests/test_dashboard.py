"""The dashboard behind a real nginx on loopback (the project's own configuration) with a test
PKI: which certificates get in, that identity comes only through the socket nginx alone can
open and never reaches a browser, that a person revoked while a page is open is stopped at
the next action and by nginx after its CRL reload, and a real browser (Playwright driving
Debian's Chromium, with a client certificate) reading the pages and acting — allowed and
refused. Screenshots are kept in the test's folder. Tests with a browser are in the stack tier,
the others in the services tier (tests/conftest.py)."""

from __future__ import annotations

import grp
import os
import re
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from bokeh.util.token import get_token_payload
from browser import pages_for
from calibration_runs import PASSED, TO_SIGNOFF, started_request
from cli import b2cal
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from dashboard_server import served_dashboard
from nginx_front import DashboardFront, dashboard_behind_nginx, nginx_group, nginx_user
from pki import PKI, Issued, name
from waiting import wait_until

from b2cal.auth.names import grid_dn
from b2cal.auth.tls import client_context
from b2cal.cdb.connect import open_store
from b2cal.db import users
from b2cal.db.database import StateDatabase
from b2cal.db.states import CalRunState
from b2cal.sites import load_site

S = CalRunState
#: How often the dashboard looks at its CA and CRL files in these tests (a site: a minute).
RELOAD = 0.5


@dataclass
class Front:
    pki: PKI
    url: str
    people: dict[str, Issued]
    calruns: dict[str, int]
    db_url: str
    folder: Path
    log: Any
    served: DashboardFront
    env: dict[str, str]

    def db(self) -> StateDatabase:
        return StateDatabase(self.db_url, create=False)

    def revoke(self, who: Issued) -> None:
        """The CA revokes ``who``; fetch-crl brings the new CRL into the certificates folder
        (the dashboard reads it within RELOAD; nginx only once reloaded)."""
        self.pki.revoke(who)
        self.pki.fetch_crl(self.served.certificates)


def dn(issued: Issued) -> str:
    return grid_dn(issued.cert.subject)


def _populate(db: StateDatabase, people: dict[str, Issued]) -> dict[str, int]:
    def expert(*names: str) -> list[dict[str, Any]]:
        return [{"role": "expert", "calibrations": list(names)}]

    members = [
        users.Member(dn(people["ada"]), grants=expert("ChannelT0")),
        users.Member(dn(people["vic"]), grants=[{"role": "viewer", "calibrations": []}]),
        users.Member(dn(people["sam"]), grants=expert("ChannelGain")),
        users.Member(dn(people["nina"]), grants=[{"role": "viewer", "calibrations": []}]),
    ]
    users.sync(db, members, "test")
    return started_request(db, ("ChannelT0", "ChannelGain"), through=TO_SIGNOFF, summary=PASSED)


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    folder = tmp_path_factory.mktemp("dashboard")
    pki = PKI(folder / "pki")
    host = pki.host("localhost")
    people = pki.cast()
    people["sam"] = pki.user("Sam Revoked Later")
    people["nina"] = pki.user("Nina Revoked Later")
    env = {
        **os.environ,
        "B2CAL_HOME": str(folder / "home"),
        "B2CAL_TRUST_RELOAD_SECONDS": str(RELOAD),
    }
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("B2CAL_HOME", env["B2CAL_HOME"])
        url = load_site("local").state_database_url
        with StateDatabase(url) as db:
            calruns = _populate(db, people)
        with open_store(load_site("local").cdb_database_url) as store:
            store.create_tag("staging-prompt-1")  # what starting the request makes
    with dashboard_behind_nginx(env, pki, host, folder, "--site", "local") as served:
        yield Front(pki, served.url, people, calruns, url, folder, served.app, served, env)


def get(
    front: Front, who: Issued, path: str, follow_redirects: str = "", **headers: str
) -> httpx.Response:
    context = client_context(who.cert_path, who.key_path, front.pki.ca_file)
    with httpx.Client(verify=context, timeout=30, follow_redirects=bool(follow_redirects)) as c:
        return c.get(front.url + path, headers=headers)


@pytest.mark.services
def test_nginx_lets_in_valid_user_certificates_only(front: Front) -> None:
    answer = get(front, front.people["ada"], "/overview")
    assert answer.status_code == 200
    assert answer.headers["Strict-Transport-Security"] == "max-age=31536000"  # HTTPS only
    for who in ("rex", "old", "early", "mallory"):
        answer = get(front, front.people[who], "/overview")
        assert answer.status_code == 400, who  # nginx's "The SSL certificate error"
        assert "SSL certificate error" in answer.text or "certificate" in answer.text.lower()


@pytest.mark.services
def test_identity_comes_only_through_the_socket_nginx_alone_can_open(front: Front) -> None:
    # Through nginx, identity headers a client wrote are replaced by nginx's own.
    vic_pem = quote(front.people["vic"].cert.public_bytes(Encoding.PEM).decode())
    written = {"X-SSL-Client-Cert": vic_pem, "X-SSL-Client-S-DN": "CN=Vic"}
    answer = get(front, front.people["ada"], "/denied", **written)
    assert answer.status_code == 200 and dn(front.people["ada"]) in answer.text
    # The socket: nginx's group may open it, nobody else; its folder is closed to others too.
    sock = front.served.socket
    info = sock.stat()
    assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o660
    assert grp.getgrgid(info.st_gid).gr_name == nginx_group()
    assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o750
    if os.geteuid() != 0:
        pytest.skip("the socket's refusal of other accounts needs root to run as another uid")
    # nginx's workers run as its user (and get through: every page of these tests)...
    workers = [p for p in Path("/proc").iterdir() if p.name.isdigit()
               and b"nginx: worker process" in _read(p / "cmdline")]  # fmt: skip
    assert workers, "no nginx worker process"
    uids = {int(_read(w / "status").split(b"\nUid:")[1].split()[0]) for w in workers}
    assert uids == {int(subprocess.check_output(["id", "-u", nginx_user()]))}
    # ...and a process of another account, in no group of nginx's, cannot connect.
    probe = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n    s.connect(sys.argv[1])\nexcept PermissionError:\n    sys.exit(13)\n"
        "sys.exit(0)\n"
    )
    stranger = subprocess.run(
        ["/usr/bin/python3", "-c", probe, str(sock)],
        user=54321, group=54321, extra_groups=[], capture_output=True, text=True,
    )  # fmt: skip
    assert stranger.returncode == 13, stranger.stdout + stranger.stderr


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


@pytest.mark.services
def test_the_development_server_refuses_identity_headers_over_tcp(front: Front) -> None:
    forged = {"X-SSL-Client-Verify": "SUCCESS", "X-SSL-Client-S-DN": "CN=Cora,DC=org"}
    with served_dashboard(front.env, "--site", "local", "--user", "/DC=org/CN=Dev") as dev:
        url = f"http://127.0.0.1:{dev.port}"
        refused = httpx.get(url + "/overview", headers=forged, follow_redirects=True)
        assert refused.status_code == 401 and "over TCP" in refused.text
        cert = {"X-SSL-Client-Verify": "SUCCESS", "X-SSL-Client-Cert": "anything"}
        assert httpx.get(url + "/denied", headers=cert).status_code == 401
        plain = httpx.get(url + "/denied")
        assert "you are /DC=org/CN=Dev" in plain.text  # the development user, and nobody else
    assert "refused 127.0.0.1 /overview" in dev.log()


@pytest.mark.services
def test_a_second_dashboard_on_the_socket_is_refused_in_one_line(front: Front) -> None:
    second = b2cal("dashboard", "--site", "local", "--socket", str(front.served.socket),
                   "--origin", "127.0.0.1:1", env=front.env)  # fmt: skip
    assert second.returncode == 1
    assert second.stderr.strip() == (
        f"error: {front.served.socket} already answers (another dashboard runs there): "
        "stop it first"
    )
    assert get(front, front.people["vic"], "/overview").status_code == 200  # still served


@pytest.mark.services
def test_session_tokens_carry_no_identity_and_no_secret(front: Front) -> None:
    """Bokeh embeds a session token in every page, with the opening request's headers in
    it: readable by whoever has the page. It must carry none that nginx sets."""
    ada = front.people["ada"]
    page = get(front, ada, "/overview").text
    tokens = re.findall(r'"token":\s*"([A-Za-z0-9_.\-]+)"', page)
    assert tokens, "no session token in the page"
    pem = ada.cert.public_bytes(Encoding.PEM).decode()
    body = "".join(pem.splitlines()[1:-1])[:40]  # a piece of the certificate
    for token in tokens:
        payload = get_token_payload(token)
        headers = {k.lower() for k in payload.get("headers", {})}
        assert not {h for h in headers if "ssl" in h or "b2cal" in h}, headers
        assert headers <= {"host", "user-agent", "accept-language"}, headers
        assert payload.get("cookies", {}) == {}
        text = str(payload)
        assert body not in text and quote(body) not in text and "Ada Expert" not in text
    assert body not in page and "BEGIN CERTIFICATE" not in page


@pytest.mark.services
def test_a_certificate_whose_name_reads_as_someone_elses_dn_is_refused(front: Front) -> None:
    """nginx accepts it (a trusted CA issued it); the dashboard's gate does not, since its DN
    in the slash form would be Ada's, with her grants."""
    twin_name = name((NameOID.DOMAIN_COMPONENT, "org"), (NameOID.DOMAIN_COMPONENT, "b2cal-test"),
                     (NameOID.COMMON_NAME, "Users/CN=Ada Expert"))  # fmt: skip
    twin = front.pki.user("twin", subject=twin_name, label="ada-twin")
    assert grid_dn(twin.cert.subject) == dn(front.people["ada"])
    refused = get(front, twin, "/overview", follow_redirects="yes")
    assert refused.status_code == 401 and "reads as more than one attribute" in refused.text
    assert "refused the front /overview" in front.log.log()


@pytest.mark.stack
def test_a_person_revoked_while_a_page_is_open_is_stopped_at_the_next_action(
    front: Front, browser_as: Any, tmp_path: Path
) -> None:
    sam = front.people["sam"]  # an expert of ChannelGain
    target = front.calruns["ChannelGain"]
    page = browser_as(sam)
    page.goto(front.url + f"/calrun?id={target}")
    page.get_by_role("button", name="Approve").wait_for()
    front.revoke(sam)
    time.sleep(RELOAD + 0.2)
    page.get_by_role("button", name="Approve").click()
    ended = page.get_by_text("this page has ended")
    try:
        ended.wait_for()
    finally:
        page.screenshot(path=str(tmp_path / "revoked.png"), full_page=True)
    assert "Sam Revoked Later was revoked" in (ended.text_content() or "")
    with front.db() as db:
        assert db.calibration_run(target).state is S.AWAITING_SIGNOFF
        assert db.signoffs(target) == []
    log = front.log.log()
    assert "ended a session of the dashboard" in log
    wait_until(  # and its connection is closed by the server
        lambda: "WebSocket connection closed" in front.log.log().split("ended a session", 1)[1],
        10, "the ended session's websocket to close", every=0.1,
    )  # fmt: skip


@pytest.mark.services
def test_nginx_refuses_a_revoked_certificate_once_trust_update_reloaded_it(front: Front) -> None:
    nina = front.people["nina"]
    assert get(front, nina, "/overview").status_code == 200
    front.revoke(nina)
    time.sleep(RELOAD + 0.2)
    # nginx still has the old CRL: it lets her through, and the dashboard refuses her
    behind = get(front, nina, "/denied")
    assert behind.status_code == 401 and "Nina Revoked Later was revoked" in behind.text
    done = front.served.trust_update()  # what fetch-crl's postexec runs
    assert done.returncode == 0, done.stdout + done.stderr
    assert "nginx reloaded" in done.stdout
    wait_until(lambda: get(front, nina, "/overview").status_code == 400, 10,
               "nginx to refuse the revoked certificate", every=0.1)  # fmt: skip
    assert get(front, front.people["vic"], "/overview").status_code == 200


@pytest.fixture
def browser_as(front: Front) -> Iterator[Any]:
    """A Chromium page presenting a person's certificate to nginx."""
    with pages_for(front.url) as page_of:
        yield page_of


@pytest.mark.stack
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


@pytest.mark.stack
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


@pytest.mark.stack
def test_a_stale_page_cannot_approve_what_it_did_not_show(
    front: Front, browser_as: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ada's page shows attempt 1 waiting; meanwhile it is rejected and rerun (attempt 2):
    her Approve is refused, nothing changes."""
    from b2cal.db.states import SignoffDecision
    from b2cal.requests.operations import rerun_calibration

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


@pytest.mark.stack
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


@pytest.mark.unit
def test_the_development_user_is_refused_off_loopback() -> None:
    refused = b2cal("dashboard", "--host", "0.0.0.0", "--user", "/DC=org/CN=Dev")
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "error: --user is for development and needs a loopback address, not 0.0.0.0"
    )


@pytest.mark.unit
def test_the_dashboard_needs_a_socket_or_a_development_user_and_a_free_port() -> None:
    neither = b2cal("dashboard", "--port", "0")
    assert neither.returncode == 1
    assert neither.stderr.strip().startswith(
        "error: behind nginx the dashboard listens on a Unix socket"
    )
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        taken = b2cal("dashboard", "--port", str(port), "--user", "/DC=org/CN=Dev")
    assert taken.returncode == 1
    assert taken.stderr.strip() == (
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use"
    ), taken.stderr


@pytest.mark.stack
def test_the_overview_follows_the_state_database_live(front: Front, browser_as: Any) -> None:
    page = browser_as(front.people["vic"])
    page.goto(front.url + "/overview")
    page.wait_for_selector("#matrix", timeout=30000)
    with front.db() as db:  # a request made elsewhere after the page was shown
        made = started_request(db, ("BeamSpot",), exp=2, runs=(1, 2))
    # the page refreshes itself every 5 s from data at most 2 s old
    page.locator(f"#calrun-{made['BeamSpot']}").wait_for(timeout=20000)
    assert "PLANNED" in page.locator(f"#calrun-{made['BeamSpot']}").inner_text()
