"""b2cal's HTTPS API, served for real on loopback with a test PKI (tests/pki.py): who gets in
with which certificate or proxy, what their roles let them do, and how bad input, races and
stale pages are refused — each refusal said, logged, and nothing changed."""

from __future__ import annotations

import datetime as dt
import logging
import os
import select
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from calibration_runs import TO_SIGNOFF, started_request
from cli import b2cal, start_b2cal
from cryptography.x509.oid import NameOID
from pki import DAY, NOW, PKI, Issued, name
from waiting import wait_until

from b2cal.api.server import ApiServer, open_server
from b2cal.auth.names import grid_dn
from b2cal.auth.oids import POLICY_INDEPENDENT, POLICY_LIMITED
from b2cal.auth.tls import client_context
from b2cal.db import users
from b2cal.db.database import StateDatabase
from b2cal.db.states import CalRunState
from b2cal.settings import Settings
from b2cal.sites import load_site, sites_dir

pytestmark = pytest.mark.services

S = CalRunState
#: The trust files' re-read period in these tests (a site's default is a minute).
RELOAD = 0.5
CALIBRATIONS = ("ChannelT0", "ChannelGain", "BeamSpot", "Alignment", "SlowT0", "SleepyT0")


@dataclass
class Served:
    pki: PKI
    server: ApiServer
    url: str
    env: dict[str, str]
    people: dict[str, Issued]
    calruns: dict[str, int]

    @property
    def db(self) -> StateDatabase:
        return self.server.api.db


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("api")
    pki = PKI(folder / "pki")
    host = pki.host("localhost")
    people = pki.cast()
    env = {
        "B2CAL_HOME": str(folder / "home"),
        "B2CAL_CA_PATH": str(pki.ca_file),
        "B2CAL_CRL_PATH": str(pki.crl_file),
        "B2CAL_VOMS_DIR": str(pki.vomsdir),
        "B2CAL_API_CERT": str(host.cert_path),
        "B2CAL_API_KEY": str(host.key_path),
        # CRLs are looked at again this often (a revocation counts on open connections then)
        "B2CAL_TRUST_RELOAD_SECONDS": str(RELOAD),
    }
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        site = load_site("local")
        with StateDatabase(site.state_database_url) as db:
            members = [
                users.Member(dn(people["ada"]), grants=[{"role": "expert", "calibrations": ["ChannelT0", "ChannelGain"]}]),  # noqa: E501
                users.Member(dn(people["vic"]), grants=[{"role": "viewer", "calibrations": []}]),
                users.Member(dn(people["cora"]), grants=[{"role": "coordinator", "calibrations": []}]),  # noqa: E501
                users.Member(dn(people["rex"]), grants=[{"role": "coordinator", "calibrations": []}]),  # noqa: E501
            ]  # fmt: skip
            users.sync(db, members, "test")
            calruns = started_request(db, CALIBRATIONS, through=TO_SIGNOFF)
        server = open_server(site, "127.0.0.1", 0)
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        try:
            url = f"https://127.0.0.1:{server.server_port}"
            yield Served(pki, server, url, env, people, calruns)
        finally:
            server.shutdown()
            server.server_close()
            server.api.db.close()


def dn(issued: Issued) -> str:
    return grid_dn(issued.cert.subject)


def call(
    api: Served, who: Issued, method: str, path: str, body: dict[str, Any] | None = None
) -> tuple[int, dict[str, Any]]:
    context = client_context(who.cert_path, who.key_path, api.pki.ca_file)
    with httpx.Client(base_url=api.url + "/api/v1", verify=context, timeout=30) as client:
        answer = client.request(method, path, json=body)
    return answer.status_code, answer.json()


def refused_at_handshake(api: Served, who: Issued, caplog: pytest.LogCaptureFixture) -> str:
    """The TLS handshake fails; the server's log says why."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="b2cal.api"):
        with pytest.raises(httpx.HTTPError):
            call(api, who, "GET", "/whoami")
        deadline = time.monotonic() + 10  # the server's thread may log after the client gave up
        while time.monotonic() < deadline:
            lines = [r.message for r in caplog.records if "refused a TLS connection" in r.message]
            if lines:
                break
            time.sleep(0.05)
    assert lines, caplog.text
    return lines[-1]


def latest_refusal(api: Served, actor: str) -> dict[str, Any]:
    refusals = [a for a in api.db.actions() if a.actor == actor and a.outcome == "refused"]
    assert refusals, f"no refusal of {actor} in the action log"
    last = refusals[0]  # newest first
    return {"action": last.action, "target": last.target, "why": last.detail.get("why", "")}


def test_a_user_certificate_proves_its_dn_and_the_registry_gives_the_roles(api: Served) -> None:
    status, doc = call(api, api.people["ada"], "GET", "/whoami")
    assert status == 200
    assert doc == {
        "dn": dn(api.people["ada"]),
        "via": "certificate",
        "fqans": [],
        "grants": ["expert of ChannelGain, ChannelT0"],
        "registry": "in the registry and the VO",
    }
    status, doc = call(api, api.people["vic"], "GET", "/status")
    assert status == 200 and doc["site"] == "local"
    assert sorted(doc["awaiting_signoff"]) == sorted(api.calruns.values())


def test_certificates_that_prove_nobody_are_refused(
    api: Served, caplog: pytest.LogCaptureFixture
) -> None:
    """Wrong CA, expired, not yet valid: OpenSSL ends the handshake. Revoked: the chain is
    checked against the CRL after it, and every request is answered 401 with the reason."""
    assert "unable to get local issuer" in refused_at_handshake(api, api.people["mallory"], caplog)
    assert "expired" in refused_at_handshake(api, api.people["old"], caplog)
    assert "not yet valid" in refused_at_handshake(api, api.people["early"], caplog)
    status, doc = call(api, api.people["rex"], "GET", "/whoami")
    assert status == 401
    assert doc["error"].startswith("not authenticated: ") and "revoked" in doc["error"]
    status, doc = call(api, api.people["rex"], "POST", f"/calibration-runs/{api.calruns['Alignment']}/signoff", {"decision": "approve", "upload": "no"})  # noqa: E501  # fmt: skip
    assert status == 401
    assert api.db.calibration_run(api.calruns["Alignment"]).state is S.AWAITING_SIGNOFF


def test_a_voms_proxy_acts_with_the_roles_of_its_fqans(api: Served) -> None:
    """Eve is not in the registry: her proxy's /belle/Role=calibration makes her an expert
    of every calibration (the site's role map)."""
    eve = api.people["eve"]
    acs = api.pki.voms_acs(eve, ["/belle/Role=calibration/Capability=NULL"])
    proxy = api.pki.proxy(eve, acs=acs, label="eve-proxy")
    status, doc = call(api, proxy, "GET", "/whoami")
    assert status == 200
    assert doc["dn"] == dn(eve) and doc["via"] == "proxy"
    assert doc["grants"] == ["expert"]
    target = api.calruns["BeamSpot"]
    body = {"decision": "approve", "comment": "pulls fine", "upload": "no"}
    status, doc = call(api, proxy, "POST", f"/calibration-runs/{target}/signoff", body)
    assert status == 200, doc
    assert doc["actor"] == dn(eve) and doc["decision"] == "approve"
    assert "upload waits" in doc["next"]
    assert api.db.calibration_run(target).state is S.APPROVED
    (signed,) = api.db.signoffs(target)
    assert signed.actor == dn(eve)


def test_proxies_whose_voms_attributes_cannot_be_trusted_are_refused(
    api: Served, caplog: pytest.LogCaptureFixture
) -> None:
    eve = api.people["eve"]
    role = ["/belle/Role=calibration"]
    cases = {
        "forged": (api.pki.voms_acs(eve, role, tamper=True), "forged"),
        "stranger": (
            api.pki.voms_acs(eve, role, signer=api.pki.host("voms.stranger.test")),
            "no VOMS server of belle",
        ),
        "atlas": (
            api.pki.voms_acs(eve, ["/atlas/Role=production"], vo="atlas"),
            "for VO 'atlas'",
        ),
        "expired-ac": (
            api.pki.voms_acs(eve, role, not_before=NOW - 2 * DAY, not_after=NOW - DAY),
            "expired",
        ),
    }
    for label, (acs, reason) in cases.items():
        proxy = api.pki.proxy(eve, acs=acs, label=f"eve-{label}")
        status, doc = call(api, proxy, "GET", "/whoami")
        assert status == 401 and reason in doc["error"], (label, doc)
    expired = api.pki.proxy(
        eve, not_before=NOW - 2 * DAY, not_after=NOW - DAY, label="eve-expired-proxy"
    )
    assert "expired" in refused_at_handshake(api, expired, caplog)  # OpenSSL checks proxies too


@pytest.mark.skipif(
    shutil.which("voms-proxy-fake") is None and os.environ.get("CI") != "true",
    reason="needs Debian's voms-clients (scripts/tools.sh installs it)",
)
def test_a_proxy_made_by_voms_proxy_fake_signs_off_through_the_command_line(
    api: Served, tmp_path: Path
) -> None:
    """What an expert types: ``b2cal signoff --api URL`` with the proxy in X509_USER_PROXY."""
    eve = api.people["eve"]
    certdir = tmp_path / "certdir"
    certdir.mkdir()
    shutil.copy(api.pki.ca_file, certdir / "ca.pem")
    subprocess.run(["openssl", "rehash", str(certdir)], check=True, capture_output=True)
    proxy = tmp_path / "x509up"
    made = subprocess.run(
        ["voms-proxy-fake", "-cert", str(eve.cert_path), "-key", str(eve.key_path),
         "-hostcert", str(api.pki.voms.cert_path), "-hostkey", str(api.pki.voms.key_path),
         "-voms", "belle", "-uri", "voms.belle.test:15020", "-fqan", "/belle/Role=calibration",
         "-rfc", "-bits", "2048", "-out", str(proxy)],
        capture_output=True, text=True, timeout=120,
        env={"X509_CERT_DIR": str(certdir), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert made.returncode == 0, made.stdout + made.stderr
    target = api.calruns["SlowT0"]
    client_env = {"X509_USER_PROXY": str(proxy), "X509_CERT_DIR": str(certdir), "B2CAL_HOME": api.env["B2CAL_HOME"]}  # noqa: E501  # fmt: skip
    whoami = b2cal("api", "whoami", api.url, env=client_env)
    assert whoami.returncode == 0, whoami.stderr
    assert dn(eve) in whoami.stdout and "/belle/Role=calibration" in whoami.stdout
    done = b2cal("signoff", str(target), "approve", "--comment", "ok", "--upload", "no",
                 "--api", api.url, env=client_env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"approved by {dn(eve)}" in done.stdout.replace("\n", "")
    assert api.db.calibration_run(target).state is S.APPROVED
    again = b2cal("signoff", str(target), "reject", "--comment", "no", "--upload", "no",
                  "--api", api.url, env=client_env)  # fmt: skip
    assert again.returncode == 1
    assert again.stderr.startswith("error: ") and len(again.stderr.strip().splitlines()) == 1
    assert "approved by" in again.stderr or "APPROVED" in again.stderr
    no_proxy = b2cal(
        "signoff", str(target), "approve", "--api", api.url,
        env={**client_env, "X509_USER_PROXY": str(tmp_path / "missing")},
    )  # fmt: skip
    assert no_proxy.returncode == 1 and "X509_USER_PROXY names" in no_proxy.stderr


def test_an_action_the_roles_do_not_allow_is_refused_and_logged(api: Served) -> None:
    vic, ada = api.people["vic"], api.people["ada"]
    target = api.calruns["Alignment"]
    path = f"/calibration-runs/{target}/signoff"
    status, doc = call(api, vic, "POST", path, {"decision": "approve", "upload": "no"})
    assert status == 403 and "may not sign off" in doc["error"], doc
    assert latest_refusal(api, dn(vic))["target"] == f"calibration run {target}"
    # An expert of other calibrations neither; nor may an expert promote or skip.
    status, doc = call(api, ada, "POST", path, {"decision": "approve", "upload": "no"})
    assert status == 403 and "expert of Alignment" in doc["error"]
    status, doc = call(api, ada, "POST", "/tags/running/promote", {"staging": "staging-prompt-1", "start": [1, 1]})  # noqa: E501  # fmt: skip
    assert status == 403 and "coordinator" in doc["error"]
    status, doc = call(api, ada, "POST", f"/calibration-runs/{api.calruns['ChannelT0']}/skip", {"comment": "x"})  # noqa: E501  # fmt: skip
    assert status == 403
    status, doc = call(api, api.people["eve"], "GET", "/status")  # in no registry, no proxy
    assert status == 403 and "no role" in doc["error"]
    assert api.db.calibration_run(target).state is S.AWAITING_SIGNOFF


def test_of_two_people_signing_off_at_once_one_wins_and_the_other_is_told(api: Served) -> None:
    target = api.calruns["ChannelGain"]
    path = f"/calibration-runs/{target}/signoff"
    ada, cora = api.people["ada"], api.people["cora"]
    start = threading.Barrier(2)
    answers: dict[str, tuple[int, dict[str, Any]]] = {}

    def decide(name: str, who: Issued, decision: str) -> None:
        start.wait()
        answers[name] = call(api, who, "POST", path, {"decision": decision, "comment": name, "upload": "no"})  # noqa: E501  # fmt: skip

    threads = [
        threading.Thread(target=decide, args=("ada", ada, "approve")),
        threading.Thread(target=decide, args=("cora", cora, "reject")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(status for status, _ in answers.values()) == [200, 409], answers
    winner = next(name for name, (status, _) in answers.items() if status == 200)
    loser_doc = next(doc for status, doc in answers.values() if status == 409)
    assert f"{dn(api.people[winner])} chose" in loser_doc["error"]  # who decided first
    assert len(api.db.signoffs(target)) == 1
    assert api.db.signoffs(target)[0].actor == dn(api.people[winner])


def test_stale_pages_and_invalid_forms_change_nothing(api: Served) -> None:
    cora = api.people["cora"]
    target = api.calruns["ChannelT0"]
    path = f"/calibration-runs/{target}/signoff"
    status, doc = call(api, cora, "POST", path, {"decision": "approve", "attempt": 2, "upload": "no"})  # noqa: E501  # fmt: skip
    assert status == 409 and "attempt 1" in doc["error"], doc
    assert latest_refusal(api, dn(cora))["target"] == f"calibration run {target}"
    status, doc = call(api, cora, "POST", path, {"decision": "perhaps", "upload": "no"})
    assert status == 400 and "decision" in doc["error"]
    status, doc = call(api, cora, "POST", path, {"decision": "approve", "colour": "red"})
    assert status == 400 and "colour" in doc["error"]
    status, doc = call(api, cora, "POST", path, {"decision": "reject", "upload": "no"})
    assert status == 400 and "needs a comment" in doc["error"]
    status, doc = call(api, cora, "POST", "/requests", {"exp": 1, "runs": [4, 2], "calibrations": ["ChannelT0"], "dry_run": True})  # noqa: E501  # fmt: skip
    assert status == 400, doc
    status, doc = call(api, cora, "POST", "/calibration-runs/999/signoff", {"decision": "approve"})
    assert status == 404 and "999" in doc["error"]
    status, doc = call(api, cora, "GET", "/calibration-runs/1/frobnicate")
    assert status == 404
    status, doc = call(api, cora, "GET", f"/calibration-runs/{target}/signoff")
    assert status == 405 and "POST" in doc["error"]
    assert api.db.calibration_run(target).state is S.AWAITING_SIGNOFF
    assert api.db.signoffs(target) == []


def test_a_body_that_is_not_json_is_refused_in_one_line(api: Served) -> None:
    cora = api.people["cora"]
    context = client_context(cora.cert_path, cora.key_path, api.pki.ca_file)
    with httpx.Client(base_url=api.url + "/api/v1", verify=context) as client:
        answer = client.post(
            f"/calibration-runs/{api.calruns['ChannelT0']}/signoff", content=b"{",
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
    assert answer.status_code == 400
    assert answer.json()["error"].startswith("the body is not JSON")


def test_the_serve_command_runs_until_sigterm_and_refuses_a_missing_certificate(
    api: Served, tmp_path: Path
) -> None:
    env = {**api.env, "B2CAL_HOME": str(tmp_path / "home")}
    missing = b2cal("api", "serve", "--port", "0", env={**env, "B2CAL_API_KEY": "/nonexistent"})
    assert missing.returncode == 1
    assert missing.stderr.startswith("error: cannot load the API's certificate")
    # A state database that cannot be reached: said in one line, nothing listens.
    unreachable = {**env, "B2CAL_STATE_URL": "postgresql+psycopg://nobody@127.0.0.1:9/none"}
    no_db = b2cal("api", "serve", "--host", "127.0.0.1", "--port", "0", env=unreachable)
    assert no_db.returncode == 1 and "state database" in no_db.stderr, no_db.stderr
    assert len(no_db.stderr.strip().splitlines()) == 1
    served = start_b2cal("api", "serve", "--host", "127.0.0.1", "--port", "0", env=api.env)
    try:
        line = served.stdout.readline() if served.stdout else ""
        assert "serving the API of site local on https://127.0.0.1:" in line, line
        url = line.split(" on ", 1)[1].split("/api/v1", 1)[0]
        other = Served(api.pki, api.server, url, api.env, api.people, api.calruns)
        status, doc = call(other, api.people["ada"], "GET", "/whoami")
        assert status == 200 and doc["dn"] == dn(api.people["ada"])
    finally:
        served.send_signal(signal.SIGTERM)
        out, err = served.communicate(timeout=30)
    assert served.returncode == 0, err
    assert "stopping the API" in out
    log = (Path(api.env["B2CAL_HOME"]) / "logs" / "api.log").read_text()
    assert f"connected as {dn(api.people['ada'])}" in log


def _tags_to_promote(staging: str) -> None:
    """A RUNNING tag with a payload from run 1 on, and a VALIDATED staging tag replacing it
    from run 3 on, in the site's conditions database."""
    from b2cal.cdb.connect import open_store
    from b2cal.cdb.model import TagState
    from b2cal.cdb.store import NewPayloadIoV
    from b2cal.core.iov import IoV

    with open_store(load_site("local").cdb_database_url) as store:
        store.create_tag("running")
        old = NewPayloadIoV("ChannelT0", b'{"t0": [1.0]}', IoV(1, 1, -1, -1))
        store.write_iovs("running", [old], state=TagState.OPEN)
        store.set_state("running", TagState.RUNNING)
        store.create_tag(staging)
        new = NewPayloadIoV("ChannelT0", b'{"t0": [2.0]}', IoV(1, 3, -1, -1))
        store.write_iovs(staging, [new], state=TagState.OPEN)
        store.set_state(staging, TagState.TESTING)
        store.set_state(staging, TagState.VALIDATED)


def test_the_coordinator_promotes_and_requests_are_planned_from_the_command_line(
    api: Served, tmp_path: Path
) -> None:
    """``b2cal cdb promote --api`` and ``b2cal request create --api --dry-run`` with proxies:
    the coordinator's promotion goes through and is logged; an expert's is refused."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in api.env.items():
            patch.setenv(key, value)
        _tags_to_promote("staging-recalibration-9")

    def proxy_env(who: Issued, fqans: list[str]) -> dict[str, str]:
        proxy = api.pki.proxy(
            who, acs=api.pki.voms_acs(who, fqans), label=f"cli-{fqans[0].rsplit('=', 1)[-1]}"
        )
        combined = tmp_path / f"{proxy.cert_path.stem}.pem"
        combined.write_bytes(proxy.cert_path.read_bytes() + proxy.key_path.read_bytes())
        return {"X509_USER_PROXY": str(combined), "X509_CERT_DIR": str(api.pki.ca_file),
                "B2CAL_HOME": str(tmp_path / "client-home")}  # fmt: skip

    promote = ["cdb", "promote", "staging-recalibration-9", "running", "--from", "1", "3",
               "--api", api.url]  # fmt: skip
    expert = b2cal(*promote, env=proxy_env(api.people["eve"], ["/belle/Role=calibration"]))
    assert expert.returncode == 1 and "may not promote tag running" in expert.stderr
    coordinator = proxy_env(api.people["eve"], ["/belle/Role=coordinator"])
    done = b2cal(*promote, env=coordinator)
    assert done.returncode == 0, done.stderr
    assert "1 payload IoVs added, 1 closed" in done.stdout
    (action,) = [a for a in api.db.actions(target="tag running") if a.outcome == "ok"]
    assert (action.actor, action.action) == (dn(api.people["eve"]), "promote")

    plan = b2cal("request", "create", "--exp", "1", "--runs", "1-4", "--calibrations",
                 "ChannelGain", "--input-tag", "running", "--dry-run", "--api", api.url,
                 env=coordinator)  # fmt: skip
    assert plan.returncode == 0, plan.stderr
    assert "ChannelT0, ChannelGain" in plan.stdout  # its dependency added
    assert "nothing was created" in plan.stdout
    bad = b2cal("request", "create", "--exp", "1", "--runs", "1-4", "--calibrations", "Nope",
                "--dry-run", "--api", api.url, env=coordinator)  # fmt: skip
    assert bad.returncode == 1 and "Nope" in bad.stderr


def test_only_json_acts_and_every_answer_is_json(api: Served) -> None:
    """A page elsewhere can make a browser post a form or text/plain with the user's
    certificate, never application/json: those bodies are refused before anything happens."""
    cora = api.people["cora"]
    context = client_context(cora.cert_path, cora.key_path, api.pki.ca_file)
    target = api.calruns["ChannelT0"]
    with httpx.Client(base_url=api.url + "/api/v1", verify=context) as client:
        form = client.post(f"/calibration-runs/{target}/signoff", data={"decision": "approve"})
        assert form.status_code == 415 and "application/json" in form.json()["error"]
        text = client.post(
            f"/calibration-runs/{target}/signoff", content=b'{"decision": "approve"}',
            headers={"Content-Type": "text/plain"},
        )  # fmt: skip
        assert text.status_code == 415
        put = client.put(f"/calibration-runs/{target}/signoff", json={})
        assert put.status_code == 405 and put.json()["error"].endswith("takes POST")
        huge = client.get("/calibration-runs/123456789012345678901234567890")
        assert huge.status_code == 404
    assert api.db.calibration_run(target).state is S.AWAITING_SIGNOFF
    status, _ = call(api, api.people["rex"], "GET", "/no/such/url")  # revoked: 401 first
    assert status == 401


def test_grants_count_as_they_are_now_on_a_kept_alive_connection(api: Served) -> None:
    vic = api.people["vic"]
    context = client_context(vic.cert_path, vic.key_path, api.pki.ca_file)
    with httpx.Client(base_url=api.url + "/api/v1", verify=context) as client:
        assert client.get("/status").status_code == 200
        users.grant(api.db, dn(vic), [], "test")  # unchanged VO grants: still a viewer
        register(api, vic, None)  # the VO no longer lists Vic
        gone = client.get("/status")
        assert gone.status_code == 403 and "no role" in gone.json()["error"]


# --- the holes an attacker found, each closed -------------------------------------------------


def register(api: Served, who: Issued, role: str | None) -> None:
    """The VO lists ``who`` with ``role`` (None: no longer lists them), and everyone else as
    before: a sync of the registry."""
    keep = [users.Member(u.dn, u.name, u.email, u.vo_grants)
            for u in users.users(api.db) if u.in_vo and u.dn != dn(who)]  # fmt: skip
    if role is not None:
        keep.append(users.Member(dn(who), grants=[{"role": role, "calibrations": []}]))
    users.sync(api.db, keep, "test")


@contextmanager
def another_server(api: Served, **settings: Any) -> Iterator[str]:
    """A second API on the same site and database, with settings of its own."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in api.env.items():
            patch.setenv(key, value)
        server = open_server(load_site("local"), "127.0.0.1", 0, Settings(**settings))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        server.api.db.close()


def kept_alive(api: Served, who: Issued, url: str | None = None) -> httpx.Client:
    context = client_context(who.cert_path, who.key_path, api.pki.ca_file)
    return httpx.Client(base_url=(url or api.url) + "/api/v1", verify=context, timeout=30)


def test_place_names_a_site_and_permission_comes_before_it_is_read(
    api: Served, tmp_path: Path
) -> None:
    """A site name in ``place`` was joined into a path and read before the permission check:
    a role-less user learnt which TOML files exist and saw server paths."""
    elsewhere = tmp_path / "elsewhere.toml"
    elsewhere.write_text('name = "elsewhere"\n')
    traversal = os.path.relpath(elsewhere.with_suffix(""), sites_dir())
    body = {"exp": 1, "runs": [1, 4], "calibrations": ["ChannelT0"],
            "place": {"ChannelT0": traversal}, "dry_run": True}  # fmt: skip
    status, doc = call(api, api.people["eve"], "POST", "/requests", body)  # no role at all
    assert status == 403 and "not in the registry" in doc["error"], doc
    status, doc = call(api, api.people["cora"], "POST", "/requests", body)  # a coordinator
    assert status == 400 and "not a site name" in doc["error"], doc
    status, doc = call(api, api.people["cora"], "POST", "/requests",
                       {**body, "place": {"ChannelT0": "nowhere"}})  # fmt: skip
    assert status == 400 and "'nowhere', which is not a known site" in doc["error"], doc
    for answer in (doc["error"],):
        assert (
            str(sites_dir()) not in answer and ".toml" not in answer and str(tmp_path) not in answer
        )
    # an expert of other calibrations is refused before the draft reads anything either
    status, doc = call(api, api.people["ada"], "POST", "/requests",
                       {**body, "calibrations": ["BeamSpot"]})  # fmt: skip
    assert status == 403 and "expert of BeamSpot" in doc["error"], doc


def test_identity_comes_before_the_body_and_bodies_are_bounded(api: Served) -> None:
    nested = b"[" * 100_000
    target = f"/calibration-runs/{api.calruns['ChannelT0']}/signoff"
    for who, expected, says in (("rex", 401, "revoked"), ("cora", 400, "deeper than 32")):
        with kept_alive(api, api.people[who]) as client:
            answer = client.post(target, content=nested, headers={"Content-Type": "application/json"})  # noqa: E501  # fmt: skip
            assert answer.status_code == expected, answer.text
            assert says in answer.json()["error"]
            # the connection goes on: the body was read whole
            assert client.get("/whoami").status_code == (401 if who == "rex" else 200)
    deep = b'{"decision": "approve", "comment": ' + b"[" * 40 + b"]" * 40 + b"}"
    with kept_alive(api, api.people["cora"]) as client:
        answer = client.post(target, content=deep, headers={"Content-Type": "application/json"})
    assert answer.status_code == 400 and "deeper than 32" in answer.json()["error"]
    assert api.db.calibration_run(api.calruns["ChannelT0"]).state is S.AWAITING_SIGNOFF
    assert not (Path(api.env["B2CAL_HOME"]) / "logs" / "api-crash.log").exists()


def test_a_revocation_counts_on_a_connection_opened_before_it(api: Served) -> None:
    ray = api.pki.user("Ray Revoked Later")
    register(api, ray, "viewer")
    with kept_alive(api, ray) as client:
        assert client.get("/status").status_code == 200
        api.pki.revoke(ray)  # the CA's new CRL lands where the API reads it
        time.sleep(RELOAD + 0.2)
        gone = client.get("/status")
        assert gone.status_code == 401 and "Ray Revoked Later was revoked" in gone.json()["error"]
        assert client.get("/whoami").status_code == 401


def test_voms_roles_end_with_their_attribute_certificate_on_an_open_connection(
    api: Served,
) -> None:
    eve = api.people["eve"]  # not in the registry: her role is the AC's alone
    ends = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=3)
    acs = api.pki.voms_acs(eve, ["/belle/Role=calibration"], not_after=ends)
    proxy = api.pki.proxy(eve, acs=acs, label="eve-short-ac")
    with kept_alive(api, proxy) as client:
        doc = client.get("/whoami").json()
        assert doc["grants"] == ["expert"], doc
        time.sleep(max(0.0, (ends - dt.datetime.now(dt.UTC)).total_seconds()) + 0.3)
        after = client.get("/whoami")
        assert after.status_code == 401, after.text
        assert "the VOMS attributes expired" in after.json()["error"]


def test_a_certificate_whose_name_reads_as_someone_elses_dn_is_refused(
    api: Served, caplog: pytest.LogCaptureFixture
) -> None:
    alice = api.pki.user("Alice Calib")
    register(api, alice, "coordinator")
    twin_name = name((NameOID.DOMAIN_COMPONENT, "org"), (NameOID.DOMAIN_COMPONENT, "b2cal-test"),
                     (NameOID.COMMON_NAME, "Users/CN=Alice Calib"))  # fmt: skip
    twin = api.pki.user("twin", subject=twin_name, label="alice-twin")
    assert grid_dn(twin.cert.subject) == dn(alice)  # the slash form cannot tell them apart
    with caplog.at_level(logging.INFO, logger="b2cal.api"):
        status, doc = call(api, twin, "GET", "/whoami")
    assert status == 401 and "reads as more than one attribute" in doc["error"], doc
    assert any(
        "refused" in r.message and "Users/CN=Alice Calib" in r.message for r in caplog.records
    )
    status, doc = call(api, alice, "GET", "/whoami")
    assert status == 200 and doc["grants"] == ["coordinator"]


def test_limited_proxies_only_read_and_independent_ones_prove_nobody(api: Served) -> None:
    cora = api.people["cora"]  # a coordinator
    target = api.calruns["SleepyT0"]
    limited = api.pki.proxy(cora, policy=POLICY_LIMITED, label="cora-limited")
    status, doc = call(api, limited, "GET", f"/calibration-runs/{target}")
    assert status == 200 and doc["state"] == "AWAITING_SIGNOFF"
    status, doc = call(api, limited, "POST", f"/calibration-runs/{target}/signoff",
                       {"decision": "approve", "upload": "no"})  # fmt: skip
    assert status == 403 and "limited proxy" in doc["error"], doc
    assert api.db.calibration_run(target).state is S.AWAITING_SIGNOFF
    for label, policy, says in (("independent", POLICY_INDEPENDENT, "independent"),
                                ("odd", "1.3.6.1.4.1.99999.1", "does not know")):  # fmt: skip
        proxy = api.pki.proxy(cora, policy=policy, label=f"cora-{label}")
        status, doc = call(api, proxy, "GET", "/status")
        assert status == 401 and says in doc["error"], (label, doc)


def test_the_api_reads_the_grid_certificates_folder_as_fetch_crl_leaves_it(
    api: Served, tmp_path: Path
) -> None:
    folder = api.pki.grid_folder(tmp_path / "certificates")
    with another_server(api, ca_path=folder, crl_path=None) as url:
        with kept_alive(api, api.people["ada"], url) as client:
            assert client.get("/whoami").json()["dn"] == dn(api.people["ada"])
        with kept_alive(api, api.people["rex"], url) as client:
            refused = client.get("/whoami")
            assert refused.status_code == 401 and "revoked" in refused.json()["error"]


def test_the_registry_says_whom_the_vo_dropped(api: Served) -> None:
    gone = api.pki.user("Gwen Gone")
    register(api, gone, "viewer")
    register(api, gone, None)
    status, doc = call(api, gone, "GET", "/whoami")
    assert doc["registry"] == "in the registry, but the VO no longer lists them"
    status, doc = call(api, gone, "GET", "/status")
    assert status == 403 and "no longer lists them" in doc["error"], doc
    status, doc = call(api, api.people["eve"], "GET", "/whoami")
    assert doc["registry"] == "not in the registry"


def _tls(url: str, who: Issued, ca: Path, source: str = "127.0.0.1") -> ssl.SSLSocket:
    host, port = url.removeprefix("https://").rsplit(":", 1)
    context = client_context(who.cert_path, who.key_path, ca)
    raw = socket.create_connection((host, int(port)), timeout=10, source_address=(source, 0))
    return context.wrap_socket(raw, server_hostname=host)


def _closed_by_server(sock: ssl.SSLSocket, wait: float) -> bool:
    """Whether the server closed the connection (readable at end of file). TLS 1.3 sends
    session tickets after the handshake, which make a socket readable with no data for
    the application: those do not count."""
    readable, _, _ = select.select([sock], [], [], wait)
    if not readable:
        return False
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except ssl.SSLWantReadError:
        return False
    except OSError:
        return True
    finally:
        sock.setblocking(True)


def test_slow_and_greedy_clients_are_cut_off_while_others_are_served(
    api: Served, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that drips its request a byte at a time is cut off once the request has
    taken api_request_seconds; one address holds at most api_connections_per_address
    connections; meanwhile everyone else is answered."""
    ada, ca = api.people["ada"], api.pki.ca_file
    with (
        caplog.at_level(logging.INFO, logger="b2cal.api"),
        another_server(api, api_request_seconds=1.0, api_connections_per_address=4) as url,
    ):
        drip = _tls(url, ada, ca)
        request = b"GET /api/v1/whoami HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 200
        sent, cut = 0, False
        for byte in request:  # a byte every 0.1 s: the whole would take over 20 s
            try:
                drip.sendall(bytes([byte]))
            except OSError:
                cut = True
                break
            sent += 1
            if _closed_by_server(drip, 0.1):
                cut = True
                break
        drip.close()
        assert cut and sent < len(request), "a dripping client was never cut off"
        # four idle connections from 127.0.0.1: a fifth is closed, another address is served
        idle = [_tls(url, ada, ca) for _ in range(4)]
        with pytest.raises((ssl.SSLError, OSError)):
            extra = _tls(url, ada, ca)
            extra.sendall(b"GET /api/v1/whoami HTTP/1.1\r\nHost: x\r\n\r\n")
            assert extra.recv(1) != b""  # closed unanswered
            raise AssertionError("a fifth connection from one address was served")
        verify = client_context(ada.cert_path, ada.key_path, ca)
        transport = httpx.HTTPTransport(local_address="127.0.0.2", verify=verify)
        with httpx.Client(transport=transport, base_url=url + "/api/v1") as elsewhere:
            assert elsewhere.get("/whoami").status_code == 200
        idle.pop().close()

        def served() -> bool:  # once the server has noticed the close, in its own time
            try:
                with kept_alive(api, ada, url) as client:
                    return client.get("/whoami").status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(served, 10, "the freed connection to count", every=0.1)
        for sock in idle:
            sock.close()
    assert any("api_connections_per_address" in r.message for r in caplog.records)
