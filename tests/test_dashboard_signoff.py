"""An expert signs off a waiting calibration in a real browser, through nginx with a client
certificate, on the shared local stack — and the upload follows: the sign-off deployment run
puts the payload into the request's staging tag; and a file that broke a collector, mended,
resubmitted and retried from the browser. Screenshots are kept in the test's folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from browser import pages_for
from nginx_front import dashboard_behind_nginx
from pki import PKI
from prefect_stack import (
    Stack,
    calruns,
    done_jobs,
    failing_always,
    outputdb_bytes,
    reference_output,
    request_state,
    wait_until,
)

from b2cal.auth.names import grid_dn
from b2cal.db import users
from b2cal.db.states import CalRunState, RequestState

pytestmark = [pytest.mark.stack, pytest.mark.usefixtures("in_stack")]
S = CalRunState


def listed_as_expert(stack: Stack, person: Any, calibration: str) -> None:
    """The VO lists ``person`` as an expert of ``calibration`` (and keeps the others)."""
    with stack.db() as db:
        known = [
            users.Member(u.dn, u.name, u.email, u.vo_grants) for u in users.users(db) if u.in_vo
        ]
        grant = {"role": "expert", "calibrations": [calibration]}
        users.sync(db, [*known, users.Member(grid_dn(person.cert.subject), grants=[grant])], "test")


def test_an_expert_signs_off_in_the_browser_and_the_upload_follows(
    stack: Stack, tmp_path: Path
) -> None:
    pki = PKI(tmp_path / "pki")
    host = pki.host("localhost")
    expert = pki.user("Bea Browser")
    listed_as_expert(stack, expert, "ChannelT0")

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
            assert f"request-{request}-channelt0-validation" in (made.text_content() or "")
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


def test_a_mended_file_is_resubmitted_and_retried_in_the_browser(
    stack: Stack, tmp_path: Path
) -> None:
    """A collector that breaks on one run's file every time fails the calibration; the file is
    transferred again; an expert presses "Resubmit failed jobs", then "Retry": only that run's
    jobs are collected again, and the payloads are those of a clean run of the same files."""
    pki = PKI(tmp_path / "pki")
    host = pki.host("localhost")
    expert = pki.user("Rea Resubmit")
    listed_as_expert(stack, expert, "FlakyT0")
    stack.copy_toy(13, "local")
    assert stack.b2cal("discover", "--site", "local").returncode == 0
    with failing_always(stack, run=3):
        create = ["request", "create", "--site", "local", "--exp", "13", "--runs", "1-4"]
        made = stack.b2cal(*create, "--calibrations", "FlakyT0")
        assert made.returncode == 0, made.stdout + made.stderr
        request = int(made.stdout.split("created request ")[1].split()[0])
        wait_until(lambda: request_state(stack, request) is RequestState.FAILED, 240, "failure")
    target = calruns(stack, request)["FlakyT0"]
    assert "run 3 fails every time" in (target.message or "")
    jobs = stack.workspace("local", request) / "output/FlakyT0/iterations/0/jobs"
    # the jobs done when it failed (the collection stops at a failed job)
    before = done_jobs(stack, "local", request, "FlakyT0")

    mended = next((stack.home / "storage-local" / "e0013").rglob("*.r00003.f00000.root"))
    copy = mended.read_bytes()
    mended.unlink()
    mended.write_bytes(copy)  # transferred again: another inode, another time
    with (
        dashboard_behind_nginx(
            stack.process_env(), pki, host, tmp_path, "--site", "local"
        ) as front,
        pages_for(front.url) as page_of,
    ):
        page = page_of(expert)
        page.goto(f"{front.url}/overview")
        cell = page.locator(f"#calrun-{target.id}")
        cell.wait_for()
        cell.locator("a").click()
        page.get_by_text(f"FlakyT0 · calibration run {target.id}").wait_for()
        page.get_by_role("button", name="Resubmit failed jobs").click()
        page.get_by_text("start afresh at the next run").wait_for()
        page.get_by_role("button", name="Retry").click()
        rerun = page.get_by_text("rerunning FlakyT0 (attempt 2)")
        try:
            rerun.wait_for()
        finally:
            page.screenshot(path=str(tmp_path / "retried.png"), full_page=True)

    wait_until(lambda: request_state(stack, request) is RequestState.DONE, 240, "the rerun")
    assert calruns(stack, request)["FlakyT0"].state is S.UPLOADED
    after = {s.parent.name: s.stat().st_mtime_ns for s in jobs.glob("*/status.json")}
    specs = {job.name: json.loads((job / "spec.json").read_text()) for job in jobs.iterdir()}
    run3 = sorted(n for n, spec in specs.items() if {f["run"] for f in spec["files"]} == {3})
    assert before and not set(run3) & set(before)
    assert {job: after[job] for job in before} == before  # what was done is kept
    output = stack.workspace("local", request) / "output/FlakyT0/outputdb"
    assert outputdb_bytes(output) == reference_output(stack, request, "FlakyT0", tmp_path)
