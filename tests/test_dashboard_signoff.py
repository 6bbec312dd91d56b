"""An expert signs off a waiting calibration in a real browser, through nginx with a client
certificate, on the shared local stack — and the upload follows: the sign-off deployment run
puts the payload into the request's staging tag. Screenshots are kept in the test's folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from browser import pages_for
from nginx_front import dashboard_behind_nginx
from pki import PKI
from prefect_stack import Stack, calruns, request_state, wait_until

from b2cal.auth.names import grid_dn
from b2cal.db import users
from b2cal.db.states import CalRunState, RequestState

pytestmark = [pytest.mark.stack, pytest.mark.usefixtures("in_stack")]
S = CalRunState


def test_an_expert_signs_off_in_the_browser_and_the_upload_follows(
    stack: Stack, tmp_path: Path
) -> None:
    pki = PKI(tmp_path / "pki")
    host = pki.host("localhost")
    expert = pki.user("Bea Browser")
    with stack.db() as db:  # the VO lists her as an expert of ChannelT0 (and keeps the others)
        known = [
            users.Member(u.dn, u.name, u.email, u.vo_grants) for u in users.users(db) if u.in_vo
        ]
        grant = {"role": "expert", "calibrations": ["ChannelT0"]}
        users.sync(db, [*known, users.Member(grid_dn(expert.cert.subject), grants=[grant])], "test")

    stack.copy_toy(9, "bnl")
    found = stack.b2cal("discover", "--site", "bnl", "--start")
    assert "started request" in found.stdout, found.stdout + found.stderr
    request = int(found.stdout.split("started request ")[1].split()[0])
    wait_until(lambda: request_state(stack, request) is RequestState.WAITING, 240, "sign-offs")
    target = calruns(stack, request)["ChannelT0"]
    assert target.state is S.AWAITING_SIGNOFF

    env = stack.process_env()
    with dashboard_behind_nginx(env, pki, host, tmp_path, "--site", "bnl") as front:
        url = front.url
        with pages_for(url) as page_of:
            page = page_of(expert)
            page.goto(url + "/overview")
            cell = page.locator(f"#calrun-{target.id}")
            cell.wait_for()
            assert "AWAITING_SIGNOFF" in (cell.text_content() or "")
            page.screenshot(path=str(tmp_path / "overview.png"), full_page=True)
            cell.locator("a").click()
            page.get_by_text(f"ChannelT0 · calibration run {target.id}").wait_for()
            log = page.locator("#flow-run-log")  # from the Prefect API: its flow run's log
            log.wait_for()
            assert "cannot be read" not in (log.text_content() or "")
            assert (log.text_content() or "").strip() != "(nothing logged)"
            made = page.locator("#artifacts")  # the validation artifacts its flow run made
            made.wait_for()
            assert f"validation-{request}-channelt0" in (made.text_content() or "")
            page.get_by_placeholder("why (needed to reject or skip)").fill("pulls look fine")
            page.get_by_role("button", name="Approve").click()
            done = page.get_by_text("approved by")
            try:
                done.wait_for()
            finally:  # what the page said, also when it said something else
                page.screenshot(path=str(tmp_path / "signed-off.png"), full_page=True)
            assert "upload started: sign-off/bnl flow run" in (done.text_content() or "")

    wait_until(lambda: calruns(stack, request)["ChannelT0"].state is S.UPLOADED, 120, "upload")
    shown = stack.b2cal("cdb", "show", f"staging-prompt-{request}", "--json")
    assert '"ChannelT0"' in shown.stdout, shown.stdout + shown.stderr
    with stack.db() as db:
        signed = db.signoffs(target.id)
        assert [(s.actor, s.comment) for s in signed] == [
            (grid_dn(expert.cert.subject), "pulls look fine")
        ]
        mine = [a for a in db.actions(target=f"calibration run {target.id}") if a.outcome == "ok"]
        assert ("signoff approve", grid_dn(expert.cert.subject)) in [
            (a.action, a.actor) for a in mine
        ]
