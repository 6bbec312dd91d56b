"""``b2cal status`` and ``b2cal signoff``: what waits for whom, and an expert's decision."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from b2cal.cli.https_api import ApiOption
from b2cal.cli.sites import Json, SiteOption, actor, open_site, state_db
from b2cal.cli.views import calrun_table, request_doc
from b2cal.db.states import SignoffDecision
from b2cal.errors import B2CalError


def status(site: SiteOption = None, as_json: Json = False) -> None:
    """Requests, calibration runs, waiting sign-offs and late files, at a glance."""
    from b2cal.cli.console import console
    from b2cal.db import discovery

    here = open_site(site)
    with state_db(here, create=False) as db:
        requests = [
            r for r in db.requests(limit=50) if here.name in (r.site, *r.placement.values())
        ]
        requests = requests[:20]  # those it runs, or runs calibrations of
        runs = [
            c
            for r in requests
            for c in db.calibration_runs(r.id)
            if here.name in (r.site, r.site_of(c.calibration))
        ]
        buckets = discovery.buckets(db, here.name)
    waiting = [c for c in runs if c.state.value == "AWAITING_SIGNOFF"]
    late = [b for b in buckets if b.late_files]
    if as_json:
        doc = {
            "requests": [
                request_doc(r, [c for c in runs if c.request_id == r.id]) for r in requests
            ],
            "awaiting_signoff": [c.id for c in waiting],
            "late_files": {b.label: b.late_files for b in late},
        }
        sys.stdout.write(json.dumps(doc, indent=1) + "\n")
        return
    by_id = {r.id: r for r in requests}
    title = f"Calibration runs of site {here.name} (latest requests)"
    console.print(calrun_table(runs, title, by_id))
    for c in waiting:
        console.print(
            f"[bold yellow]awaiting sign-off[/]: calibration run {c.id} ({c.calibration} "
            f"of request {c.request_id}): b2cal signoff {c.id} approve|reject"
        )
    for b in late:
        console.print(
            f"[yellow]late files[/]: {b.label} has {b.late_files} files that came after it closed"
        )
    for r in requests:
        alone = not any(c.request_id == r.id for c in runs)
        if r.state.value in ("PENDING", "FAILED") and alone:
            console.print(f"{r.label}: {r.state.value}" + (f" ({r.message})" if r.message else ""))
        elif r.state.value == "RUNNING" and r.message:  # a crash, a pending automatic retry
            console.print(f"[bold red]{r.label}[/]: {r.message}")
    if not requests:
        console.print(f"no requests at site {here.name} yet")


def signoff(
    calibration_run: Annotated[int, typer.Argument(metavar="CALRUN", help="Calibration run id.")],
    decision: Annotated[str, typer.Argument(metavar="approve|reject", help="The decision.")],
    comment: Annotated[
        str, typer.Option(help="Why (kept in the action log; needed to reject).")
    ] = "",
    site: SiteOption = None,
    upload: Annotated[
        str,
        typer.Option(
            metavar="HOW",
            help="After an approval: 'flow' starts the site's sign-off deployment run, 'here' "
            "uploads from this process (no Prefect needed), 'no' leaves it for later.",
        ),
    ] = "flow",
    attempt: Annotated[
        int | None,
        typer.Option(metavar="N", help="The attempt you looked at: refused if it was rerun since."),
    ] = None,
    api: ApiOption = None,
) -> None:
    """Approve or reject a calibration run that awaits a sign-off (here, as this machine's
    account, or with --api through a site's HTTPS API as your grid proxy)."""
    from b2cal.cli.console import console
    from b2cal.requests.operations import act_on_signoff

    try:
        chosen = SignoffDecision(decision)
    except ValueError:
        raise B2CalError(f"decision must be approve or reject, got {decision!r}") from None
    if upload not in ("flow", "here", "no"):
        raise B2CalError(f"--upload must be flow, here or no, got {upload!r}")
    if chosen is SignoffDecision.REJECT and not comment.strip():
        raise B2CalError("a rejection needs --comment saying why (the expert reruns from it)")
    if api is not None:
        _signoff_through(api, calibration_run, chosen, comment, upload, attempt)
        return
    here = open_site(site)
    with state_db(here, create=False) as db:
        signed, followup = act_on_signoff(
            db, calibration_run, chosen, actor(), comment, upload, attempt=attempt
        )
    console.print(f"calibration run {calibration_run}: {chosen.value}d by {signed.actor}")
    if followup:
        console.print(followup)


def _signoff_through(
    url: str,
    calibration_run: int,
    decision: SignoffDecision,
    comment: str,
    upload: str,
    attempt: int | None,
) -> None:
    from b2cal.api.client import ApiClient
    from b2cal.cli.console import console

    if upload == "here":
        raise B2CalError("--upload here cannot go with --api: the remote site uploads (flow or no)")
    body = {"decision": decision.value, "comment": comment, "upload": upload, "attempt": attempt}
    with ApiClient(url) as client:
        done = client.post(f"/calibration-runs/{calibration_run}/signoff", body)
    console.print(f"calibration run {calibration_run}: {decision.value}d by {done['actor']}")
    if done.get("next"):
        console.print(done["next"])
