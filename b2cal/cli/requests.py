"""``b2cal discover``, ``bucket``, ``request``, ``status``, ``signoff``: the prompt-calibration
loop from the command line, on b2cal's state database and the site's Prefect deployments."""

from __future__ import annotations

import getpass
import json
import socket
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from b2cal.cli.arguments import parse_runs
from b2cal.errors import B2CalError

if TYPE_CHECKING:
    from rich.table import Table

    from b2cal.db.database import StateDatabase
    from b2cal.db.model import CalibrationRun, Request
    from b2cal.sites import RequestKind, Site

bucket_app = typer.Typer(
    help="Buckets: run ranges of new data, one prompt request each.", no_args_is_help=True
)
request_app = typer.Typer(
    help="Processing requests: create, list, show, cancel.", no_args_is_help=True
)

SiteOption = Annotated[
    str | None,
    typer.Option(metavar="SITE", help="Site (default: B2CAL_SITE, else local)."),
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")]


def actor() -> str:
    """Who is acting: the local account (certificate identities come with the dashboard)."""
    return f"local:{getpass.getuser()}@{socket.gethostname()}"


def _site(name: str | None) -> Site:
    from b2cal.sites import load_site

    return load_site(name)


def _db(site: Site, create: bool = True) -> StateDatabase:
    from b2cal.db.database import StateDatabase

    return StateDatabase(site.state_database_url, create=create)


def _age(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    seconds = int((datetime.now(UTC) - moment).total_seconds())
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    if seconds < 172800:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} d ago"


def _duration(run: CalibrationRun) -> str:
    if run.started is None:
        return "-"
    end = run.finished or datetime.now(UTC)
    seconds = int((end - run.started).total_seconds())
    return f"{seconds // 60}:{seconds % 60:02d}"


# --- discovery and buckets ----------------------------------------------------------------
def discover(
    site: SiteOption = None,
    start: Annotated[
        bool,
        typer.Option(
            "--start/--no-start",
            help="Start the prompt request of every bucket that closes (on the site's pool).",
        ),
    ] = False,
) -> None:
    """Scan the site's storage once: register settled files, close full buckets."""
    from b2cal.cli.console import console, errors
    from b2cal.db import discovery

    here = _site(site)
    with _db(here) as db:
        with errors.status(f"scanning {', '.join(map(str, here.storage_roots))}") as shown:
            report = discovery.discover(
                db, here, on_file=lambda o: shown.update(f"scanning {o.path.parent}")
            )
        started = [_start_prompt(db, here, bucket.id) for bucket in report.closed] if start else []
    for root in report.missing_roots:
        console.print(f"[yellow]storage root {root} does not exist[/]")
    for bad in report.bad:
        console.print(f"[red]bad file[/] {bad}")
    for late in report.late:
        console.print(f"[yellow]late file[/] {late}")
    console.print(
        f"site {here.name}: {report.seen} files seen, {len(report.registered)} registered, "
        f"{report.settling} settling, {len(report.late)} late, {len(report.bad)} bad"
    )
    for bucket in report.closed:
        console.print(f"closed {bucket.label}: runs {bucket.first_run}-{bucket.last_run}")
    for request in started:
        console.print(f"started {request.label}")


def _start_prompt(db: StateDatabase, site: Site, bucket_id: int) -> Request:
    from b2cal.orchestration.api import check_reachable
    from b2cal.orchestration.requests import create_prompt_request, start_request

    check_reachable()  # before anything is created
    request = create_prompt_request(db, site, bucket_id, actor())
    start_request(db, request, site)
    return request


@bucket_app.command("list")
def bucket_list(site: SiteOption = None, as_json: Json = False) -> None:
    """Buckets of the site: run range, state, late files."""
    from rich.table import Table

    from b2cal.cli.console import console
    from b2cal.db import discovery

    here = _site(site)
    with _db(here, create=False) as db:
        rows = discovery.buckets(db, here.name)
    if as_json:
        doc = [
            {**b.__dict__, "state": b.state.value, "opened": str(b.opened), "closed": str(b.closed)}
            for b in rows
        ]
        sys.stdout.write(json.dumps(doc, indent=1) + "\n")
        return
    table = Table(title=f"Buckets at site {here.name} (rule: {here.buckets.describe()})")
    for column in ("exp", "bucket", "runs", "state", "opened", "closed", "late files"):
        table.add_column(column)
    for b in rows:
        late = f"[yellow]{b.late_files}[/]" if b.late_files else ""
        table.add_row(
            str(b.exp),
            str(b.number),
            f"{b.first_run}-{b.last_run} ({b.runs})",
            b.state.value,
            _age(b.opened),
            _age(b.closed),
            late,
        )
    console.print(table)


@bucket_app.command("close")
def bucket_close(
    exp: Annotated[int, typer.Option(help="Experiment number.")],
    bucket: Annotated[int, typer.Option(metavar="N", help="Bucket number (see bucket list).")],
    site: SiteOption = None,
    start: Annotated[
        bool, typer.Option("--start/--no-start", help="Start its prompt request now.")
    ] = False,
) -> None:
    """Close an open bucket now (its prompt request may then start)."""
    from b2cal.cli.console import console
    from b2cal.db import discovery

    here = _site(site)
    with _db(here, create=False) as db:
        closed = discovery.close_bucket(db, here.name, exp, bucket, actor())
        console.print(f"closed {closed.label}: runs {closed.first_run}-{closed.last_run}")
        if start:
            request = _start_prompt(db, here, closed.id)
            console.print(f"started {request.label}")


# --- requests -----------------------------------------------------------------------------
@request_app.command("create")
def request_create(
    exp: Annotated[int, typer.Option(help="Experiment number.")],
    runs: Annotated[
        str | None,
        typer.Option(metavar="A-B", help="Run range A-B (inclusive) or run A (or --bucket)."),
    ] = None,
    bucket: Annotated[
        int | None,
        typer.Option(metavar="N", help="Instead of --runs: the prompt request of closed bucket N."),
    ] = None,
    calibrations: Annotated[
        str | None,
        typer.Option(
            metavar="C1,C2",
            help="Comma-separated calibrations, dependencies added (default for a bucket: "
            "every reference calibration).",
        ),
    ] = None,
    kind: Annotated[
        str | None,
        typer.Option(
            metavar="KIND",
            help="prompt, recalibration or mc (default: recalibration, prompt for a bucket).",
        ),
    ] = None,
    site: SiteOption = None,
    input_tag: Annotated[
        list[str] | None,
        typer.Option(
            metavar="TAG",
            help="Global tag to look payloads up in after the calibrations' own (repeat; "
            "default: the site's running tag, if it exists).",
        ),
    ] = None,
    reference_tag: Annotated[
        str | None,
        typer.Option(metavar="TAG", help="Tag validation compares against (default: running)."),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="TOML expert settings per calibration (as caf run)."),
    ] = None,
    open_ended: Annotated[
        bool,
        typer.Option(
            "--open-ended", help="Leave the last IoV of each payload open (always for prompt)."
        ),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan; create and start nothing.")
    ] = False,
    start: Annotated[
        bool,
        typer.Option("--start/--no-start", help="Start its process-request run on the site."),
    ] = True,
) -> None:
    """Create a processing request and start it on the site's work pool."""
    from b2cal.caf.config import read_config
    from b2cal.caf.registry import available
    from b2cal.cli.console import console
    from b2cal.db import discovery
    from b2cal.orchestration.api import check_reachable
    from b2cal.orchestration.requests import PROMPT_CALIBRATIONS, new_request, start_request
    from b2cal.sites import RequestKind

    if (runs is None) == (bucket is None):
        raise B2CalError("give exactly one of --runs A-B and --bucket N")
    try:
        request_kind = RequestKind(kind or ("prompt" if bucket is not None else "recalibration"))
    except ValueError:
        raise B2CalError(f"--kind must be prompt, recalibration or mc, got {kind!r}") from None
    if calibrations is None and bucket is None:
        raise B2CalError("--calibrations is needed for a run range")
    names = [n.strip() for n in (calibrations or ",".join(PROMPT_CALIBRATIONS)).split(",")]
    names = [n for n in names if n]
    overrides = read_config(config, available()) if config is not None else {}
    open_ended = open_ended or request_kind is RequestKind.PROMPT  # as Belle II prompt does
    here = _site(site)
    with _db(here, create=not dry_run) as db:
        bucket_id = None
        if bucket is not None:
            found = [b for b in discovery.buckets(db, here.name, exp) if b.number == bucket]
            if not found:
                raise B2CalError(f"no bucket {bucket} of experiment {exp} at site {here.name}")
            first, last, bucket_id = found[0].first_run, found[0].last_run, found[0].id
        else:
            assert runs is not None
            first, last = parse_runs(runs)
        if dry_run:
            _print_request_plan(
                db, here, request_kind, exp, first, last, names, overrides, input_tag, open_ended
            )
            return
        if start:
            check_reachable()  # before anything is created
        request = new_request(
            db,
            here,
            kind=request_kind,
            exp=exp,
            runs=(first, last),
            calibrations=names,
            input_tags=input_tag,
            reference_tag=reference_tag,
            config=overrides,
            open_ended=open_ended,
            actor=actor(),
            bucket_id=bucket_id,
        )
        console.print(f"created {request.label}, staging tag {request.staging_tag}")
        if start:
            flow_run = start_request(db, request, here)
            console.print(f"started process-request/{here.name}: flow run {flow_run}")


def _print_request_plan(
    db: StateDatabase,
    here: Site,
    kind: RequestKind,
    exp: int,
    first: int,
    last: int,
    names: list[str],
    overrides: dict[str, dict[str, Any]],
    input_tags: list[str] | None,
    open_ended: bool,
) -> None:
    from b2cal.cli.console import console, plan_tables
    from b2cal.orchestration.requests import draft_request
    from b2cal.processing.preparation import dry_run

    request = draft_request(
        here, kind, exp, (first, last), names, input_tags, overrides, open_ended
    )
    with tempfile.TemporaryDirectory(prefix="b2cal-dry-run-") as scratch:
        plan, _ = dry_run(db, here, request, Path(scratch))
    for table in plan_tables(plan):
        console.print(table)
    chain = ["previous iteration", "dependencies' outputs", *request.input_tags]
    console.print(f"site {here.name} (pool {here.work_pool}); database chain: {' → '.join(chain)}")
    console.print("dry run: nothing was created or started")


@request_app.command("list")
def request_list(site: SiteOption = None, as_json: Json = False) -> None:
    """Recent requests and how far each has come."""
    from rich.table import Table

    from b2cal.cli.console import console

    here = _site(site)
    with _db(here, create=False) as db:
        requests = db.requests()
        runs = {r.id: db.calibration_runs(r.id) for r in requests}
    if as_json:
        sys.stdout.write(
            json.dumps([_request_doc(r, runs[r.id]) for r in requests], indent=1) + "\n"
        )
        return
    table = Table(title=f"Requests (state database of site {here.name})")
    for column in ("id", "kind", "site", "exp", "runs", "state", "calibrations", "created"):
        table.add_column(column)
    for r in requests:
        states = ", ".join(f"{c.calibration} {c.state.value}" for c in runs[r.id]) or ", ".join(
            r.calibrations
        )
        table.add_row(
            str(r.id),
            r.kind.value,
            r.site,
            str(r.exp),
            f"{r.run_low}-{r.run_high}",
            r.state.value,
            states,
            _age(r.created),
        )
    console.print(table)


def _request_doc(request: Request, runs: list[CalibrationRun]) -> dict[str, object]:
    doc = {k: v for k, v in request.__dict__.items()}
    doc.update(
        kind=request.kind.value,
        state=request.state.value,
        created=str(request.created),
        updated=str(request.updated),
    )
    doc["calibration_runs"] = [
        {
            "id": c.id,
            "calibration": c.calibration,
            "state": c.state.value,
            "attempt": c.attempt,
            "iteration": c.iteration,
            "message": c.message,
        }
        for c in runs
    ]
    return doc


@request_app.command("show")
def request_show(
    request_id: Annotated[int, typer.Argument(metavar="ID", help="Request id.")],
    site: SiteOption = None,
    constants: Annotated[
        bool, typer.Option("--constants", help="Also the validated constants per IoV.")
    ] = False,
    as_json: Json = False,
) -> None:
    """One request: its calibration runs, their states, durations and messages."""
    from b2cal.cli.console import console

    here = _site(site)
    with _db(here, create=False) as db:
        request = db.request(request_id)
        runs = db.calibration_runs(request_id)
    if as_json:
        sys.stdout.write(json.dumps(_request_doc(request, runs), indent=1) + "\n")
        return
    console.print(
        f"{request.label}: {request.state.value}; site {request.site}; staging tag "
        f"{request.staging_tag}; input tags {', '.join(request.input_tags) or 'none'}"
    )
    console.print(_calrun_table(runs, f"Calibration runs of request {request.id}"))
    if request.message:
        console.print(f"message: {request.message}")
    if constants:
        for run in runs:
            console.print(_constants_table(run))


def _constants_table(run: CalibrationRun) -> Table:
    """The validated constants of a calibration run, per IoV and field (from its summary)."""
    from rich.table import Table

    summary = run.summary or {}
    verdict = "passed" if summary.get("passed") else "FAILED" if summary else "not validated"
    reference = summary.get("reference_tag") or "none"
    table = Table(title=f"{run.calibration}: validation {verdict} (reference tag: {reference})")
    for column in ("IoV", "field", "n", "mean", "min", "max", "change", "max |pull|", "flagged"):
        table.add_column(column, justify="left" if column in ("IoV", "field") else "right")
    for f in summary.get("fields", []):
        change = "" if f.get("change") is None else f"{f['change']:+.4g}"
        pull = "" if f.get("max_abs_pull") is None else f"{f['max_abs_pull']:.2f}"
        table.add_row(
            f["iov"],
            f["field"],
            str(f["size"]),
            f"{f['mean']:.4g}",
            f"{f['min']:.4g}",
            f"{f['max']:.4g}",
            change,
            pull,
            str(f.get("flagged") or ""),
        )
    return table


def _calrun_table(runs: list[CalibrationRun], title: str) -> Table:
    from rich.table import Table

    table = Table(title=title)
    for column in (
        "calrun",
        "request",
        "calibration",
        "state",
        "attempt",
        "iteration",
        "duration",
        "message",
    ):
        table.add_column(column, overflow="fold" if column == "message" else "ellipsis")
    for c in runs:
        state = c.state.value
        if c.state.value == "AWAITING_SIGNOFF":
            state = f"[bold yellow]{state}[/]"
        elif c.state.value in ("FAILED", "REJECTED", "CANCELLED"):
            state = f"[red]{state}[/]"
        elif c.state.value == "UPLOADED":
            state = f"[green]{state}[/]"
        table.add_row(
            str(c.id),
            str(c.request_id),
            c.calibration,
            state,
            str(c.attempt),
            "-" if c.iteration is None else str(c.iteration + 1),
            _duration(c),
            c.message or "",
        )
    return table


@request_app.command("wait")
def request_wait(
    request_id: Annotated[
        int | None, typer.Argument(metavar="ID", help="Request id (or --exp and --bucket).")
    ] = None,
    exp: Annotated[int | None, typer.Option(help="Experiment of --bucket.")] = None,
    bucket: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            help="Wait for the prompt request of bucket N (it may not "
            "exist yet: discovery creates it when the bucket closes).",
        ),
    ] = None,
    site: SiteOption = None,
    timeout: Annotated[
        float, typer.Option(metavar="SECONDS", help="Give up after this long.")
    ] = 1800.0,
) -> None:
    """Watch a request until nothing more happens without a person: its calibrations' states
    live, then the table. Exit 0 when it is DONE or waits for sign-offs, 2 when it failed."""
    import time

    from rich.live import Live

    from b2cal.cli.arguments import EXIT_CALIBRATION_FAILED
    from b2cal.cli.console import console, errors
    from b2cal.db import discovery
    from b2cal.db.states import RequestState

    if (request_id is None) == (bucket is None) or (bucket is not None and exp is None):
        raise B2CalError("give a request ID, or --exp E and --bucket N")
    here = _site(site)
    deadline = time.monotonic() + timeout
    with _db(here) as db:

        def find() -> int | None:
            if request_id is not None:
                return request_id
            for b in discovery.buckets(db, here.name, exp):
                if b.number == bucket:
                    matches = [r.id for r in db.requests(limit=200) if r.bucket_id == b.id]
                    return max(matches) if matches else None
            return None

        with Live(console=errors, refresh_per_second=2, transient=True) as live:
            found = find()
            while found is None:
                if time.monotonic() > deadline:
                    raise B2CalError(f"no request for bucket {bucket} after {timeout:g} s")
                live.update(
                    f"waiting for bucket {bucket} of experiment {exp} to close "
                    f"(discovery at site {here.name})"
                )
                time.sleep(1)
                found = find()
            while True:
                request = db.request(found)
                runs = db.calibration_runs(found)
                live.update(_calrun_table(runs, f"{request.label}: {request.state.value}"))
                settled = bool(runs) and (
                    request.state in (RequestState.DONE, RequestState.FAILED)
                    or (request.state is RequestState.WAITING and _only_people(request, runs))
                )
                if settled or request.state is RequestState.CANCELLED:
                    break
                if time.monotonic() > deadline:
                    raise B2CalError(
                        f"{request.label} is still {request.state.value} after {timeout:g} s"
                    )
                time.sleep(1)
    console.print(_calrun_table(runs, f"{request.label}: {request.state.value}"))
    if request.state is RequestState.WAITING:
        console.print("waiting for sign-offs: b2cal signoff CALRUN approve|reject")
    if request.state in (RequestState.FAILED, RequestState.CANCELLED):
        raise typer.Exit(EXIT_CALIBRATION_FAILED)


def _only_people(request: Request, runs: list[CalibrationRun]) -> bool:
    """Whether nothing more happens to a WAITING request without a person: every approved
    calibration run waits for a dependency (an approved one whose dependencies are uploaded
    is being uploaded right now)."""
    from b2cal.db.states import CalRunState
    from b2cal.processing.preparation import calibrations_of

    calibrations, _ = calibrations_of(request)
    states = {run.calibration: run.state for run in runs}
    return all(
        any(not states.get(dep, CalRunState.UPLOADED).done for dep in calibrations[name].depends_on)
        for name, state in states.items()
        if state is CalRunState.APPROVED
    )


@request_app.command("upload")
def request_upload(
    request_id: Annotated[int, typer.Argument(metavar="ID", help="Request id.")],
    site: SiteOption = None,
    here: Annotated[
        bool,
        typer.Option("--here", help="Upload from this process instead of a sign-off run."),
    ] = False,
) -> None:
    """Upload the request's approved calibrations that may be uploaded now (after a sign-off
    whose upload could not start, or an upload that failed)."""
    from b2cal.cdb.connect import open_store
    from b2cal.cli.console import console
    from b2cal.db.states import CalRunState
    from b2cal.orchestration.requests import start_upload
    from b2cal.processing.upload import upload_approved

    where = _site(site)
    with _db(where, create=False) as db:
        approved = [c for c in db.calibration_runs(request_id) if c.state is CalRunState.APPROVED]
        if not approved:
            raise B2CalError(f"request {request_id} has no approved calibration to upload")
        if not here:
            flow_run = start_upload(where, approved[0].id)
            console.print(f"upload started: sign-off/{where.name} flow run {flow_run}")
            return
        with open_store(where.cdb_database_url) as store:
            report = upload_approved(db, store, where, request_id)
    console.print(f"uploaded: {', '.join(report.uploaded) or 'nothing'}")
    for name, why in report.blocked.items():
        console.print(f"[yellow]{name} not uploaded[/]: {why}")


@request_app.command("rerun")
def request_rerun(
    calibration_run: Annotated[int, typer.Argument(metavar="CALRUN", help="Calibration run id.")],
    site: SiteOption = None,
    start: Annotated[
        bool, typer.Option("--start/--no-start", help="Start the request's run on the site.")
    ] = True,
) -> None:
    """Compute a stopped calibration again (after a rejection, say), with its dependants: a
    new attempt each, needing a new sign-off; unchanged collector jobs are reused."""
    from b2cal.cli.console import console
    from b2cal.orchestration.requests import rerun_calibration

    here = _site(site)
    with _db(here, create=False) as db:
        again, flow_run = rerun_calibration(db, here, calibration_run, actor(), start=start)
    console.print("rerun: " + ", ".join(f"{c.calibration} (attempt {c.attempt})" for c in again))
    if flow_run:
        console.print(f"started process-request/{here.name}: flow run {flow_run}")


@request_app.command("cancel")
def request_cancel(
    request_id: Annotated[int, typer.Argument(metavar="ID", help="Request id.")],
    site: SiteOption = None,
) -> None:
    """Cancel a request: its calibrations stop, their collector jobs are cancelled."""
    from b2cal.cli.console import console
    from b2cal.orchestration.requests import cancel_request

    here = _site(site)
    with _db(here, create=False) as db:
        cancelled = cancel_request(db, request_id, actor())
    console.print(
        f"request {request_id} cancelled"
        + (f": {', '.join(c.calibration for c in cancelled)} stopped" if cancelled else "")
    )


# --- status and sign-off ------------------------------------------------------------------
def status(site: SiteOption = None, as_json: Json = False) -> None:
    """Requests, calibration runs, waiting sign-offs and late files, at a glance."""
    from b2cal.cli.console import console
    from b2cal.db import discovery

    here = _site(site)
    with _db(here, create=False) as db:
        requests = [r for r in db.requests(limit=50) if r.site == here.name][:20]
        runs = [c for r in requests for c in db.calibration_runs(r.id)]
        buckets = discovery.buckets(db, here.name)
    waiting = [c for c in runs if c.state.value == "AWAITING_SIGNOFF"]
    late = [b for b in buckets if b.late_files]
    if as_json:
        doc = {
            "requests": [
                _request_doc(r, [c for c in runs if c.request_id == r.id]) for r in requests
            ],
            "awaiting_signoff": [c.id for c in waiting],
            "late_files": {b.label: b.late_files for b in late},
        }
        sys.stdout.write(json.dumps(doc, indent=1) + "\n")
        return
    console.print(_calrun_table(runs, f"Calibration runs at site {here.name} (latest requests)"))
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
        if r.state.value in ("PENDING", "FAILED") and not any(c.request_id == r.id for c in runs):
            console.print(f"{r.label}: {r.state.value}" + (f" ({r.message})" if r.message else ""))
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
) -> None:
    """Approve or reject a calibration run that awaits a sign-off."""
    from b2cal.cli.console import console
    from b2cal.db.states import SignoffDecision
    from b2cal.orchestration.requests import act_on_signoff

    try:
        chosen = SignoffDecision(decision)
    except ValueError:
        raise B2CalError(f"decision must be approve or reject, got {decision!r}") from None
    if upload not in ("flow", "here", "no"):
        raise B2CalError(f"--upload must be flow, here or no, got {upload!r}")
    if chosen is SignoffDecision.REJECT and not comment.strip():
        raise B2CalError("a rejection needs --comment saying why (the expert reruns from it)")
    here = _site(site)
    with _db(here, create=False) as db:
        signed, followup = act_on_signoff(
            db, here, calibration_run, chosen, actor(), comment, upload
        )
    console.print(f"calibration run {calibration_run}: {chosen.value}d by {signed.actor}")
    if followup:
        console.print(followup)
