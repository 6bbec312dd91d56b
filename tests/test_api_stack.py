"""The HTTPS API (``b2cal api serve``) acting on the shared local stack with a VOMS proxy: a
request planned, created and started, cancelled with its collector jobs; a retry from a stale
page, a retry of a cancelled request and a second cancel refused."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cli import B2CAL
from pki import PKI, Issued
from prefect_stack import (
    Stack,
    calruns,
    flow_run_message,
    flow_run_state,
    request_state,
    wait_until,
)

from b2cal.auth.names import grid_dn
from b2cal.auth.tls import client_context
from b2cal.db.states import CalRunState, RequestState

pytestmark = [pytest.mark.stack, pytest.mark.usefixtures("in_stack")]
S = CalRunState


@pytest.fixture
def api_url(stack: Stack, tmp_path: Path) -> Iterator[tuple[str, PKI]]:
    """``b2cal api serve`` of the local site, in the stack's environment, as a site runs it."""
    pki = PKI(tmp_path / "pki")
    host = pki.host("localhost")
    trust = {"B2CAL_CA_PATH": pki.ca_file, "B2CAL_CRL_PATH": pki.crl_file,
             "B2CAL_VOMS_DIR": pki.vomsdir, "B2CAL_API_CERT": host.cert_path,
             "B2CAL_API_KEY": host.key_path}  # fmt: skip
    env = {**stack.process_env(), **{k: str(v) for k, v in trust.items()}}
    served = subprocess.Popen(
        [str(B2CAL), "api", "serve", "--site", "local", "--host", "127.0.0.1", "--port", "0"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = served.stdout.readline() if served.stdout else ""
        assert " on https://" in line, line + (served.stderr.read() if served.stderr else "")
        yield line.split(" on ", 1)[1].split(" ", 1)[0], pki
    finally:
        served.send_signal(signal.SIGTERM)
        served.communicate(timeout=30)
        assert served.returncode == 0


def caller(url: str, pki: PKI, proxy: Issued) -> Any:
    context = client_context(proxy.cert_path, proxy.key_path, pki.ca_file)
    http = httpx.Client(base_url=url, verify=context, timeout=60)

    def post(path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        answer = http.post(path, json=body)
        return answer.status_code, answer.json()

    return post


def test_a_request_is_started_and_cancelled_through_the_api(
    stack: Stack, api_url: tuple[str, PKI]
) -> None:
    url, pki = api_url
    user = pki.user("Pat Proxy")
    proxy = pki.proxy(user, acs=pki.voms_acs(user, ["/belle/Role=calibration"]))
    post = caller(url, pki, proxy)
    stack.copy_toy(7, "local")
    assert stack.b2cal("discover", "--site", "local").returncode == 0

    asked = {"exp": 7, "runs": [1, 4], "calibrations": ["SlowT0"], "kind": "recalibration"}
    status, plan = post("/requests", {**asked, "dry_run": True})
    assert status == 200, plan
    assert plan["dry_run"] and plan["request"]["calibrations"] == ["SlowT0"]
    status, made = post("/requests", asked)
    assert status == 200, made
    request, flow_run = made["request"]["id"], made["flow_run"]
    assert made["request"]["created_by"] == grid_dn(user.cert.subject) and flow_run

    def collecting() -> bool:
        calrun = calruns(stack, request).get("SlowT0")
        return calrun is not None and calrun.state is S.COLLECTING

    try:
        wait_until(collecting, 120, "its collection to start")
    except AssertionError as exc:  # say what the flow run said
        said = f"{flow_run_state(flow_run)} {flow_run_message(flow_run)}"
        raise AssertionError(f"{exc}: {said}") from None

    status, cancelled = post(f"/requests/{request}/cancel", {})
    assert status == 200, cancelled
    assert [c["state"] for c in cancelled["calibration_runs"]] == ["CANCELLED"]
    wait_until(lambda: flow_run_state(flow_run) == "CANCELLED", 60, "the run to be Cancelled")
    assert request_state(stack, request) is RequestState.CANCELLED

    calrun = calruns(stack, request)["SlowT0"].id
    status, stale = post(f"/calibration-runs/{calrun}/retry", {"attempt": 2})
    assert status == 409 and "shown at attempt 2 and is now attempt 1" in stale["error"]
    status, over = post(f"/calibration-runs/{calrun}/retry", {"attempt": 1})
    assert status == 409 and "is CANCELLED" in over["error"]  # a cancelled request stays so
    status, twice = post(f"/requests/{request}/cancel", {})
    assert status == 409, twice
