"""``b2cal request``: processing requests created (checked first, or shown as a plan),
listed, shown, watched, uploaded, rerun, skipped and cancelled."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from b2cal.cli.arguments import parse_placement
from b2cal.cli.https_api import ApiOption
from b2cal.cli.sites import Json, SiteOption, actor, open_site, state_db
from b2cal.cli.views import age, calrun_table, constants_table, request_doc
from b2cal.core.iov import parse_runs
from b2cal.errors import B2CalError

if TYPE_CHECKING:
    from b2cal.db.database import StateDatabase
    from b2cal.db.model import CalibrationRun, Request

request_app = typer.Typer(
    help="Processing requests: create, list, show, wait, upload, rerun, skip, cancel.",
    no_args_is_help=True,
)


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
    place: Annotated[
        list[str] | None,
        typer.Option(
            metavar="CAL=SITE",
            help="Run calibration CAL at another site than the request's (repeat); its "
            "dependants there read its payloads from the staging tag once it is uploaded.",
        ),
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
    api: ApiOption = None,
) -> None:
    """Create a processing request and start it on the site's work pool (here, or with
    --api through a site's HTTPS API as your grid proxy)."""
    from b2cal.caf.config import read_config
    from b2cal.caf.registry import available
    from b2cal.cli.console import console
    from b2cal.db import discovery
    from b2cal.orchestrator.client import check_reachable
    from b2cal.requests.operations import draft_request, new_request, start_request
    from b2cal.sites import RequestKind

    if (runs is None) == (bucket is None):
        raise B2CalError("give exactly one of --runs A-B and --bucket N")
    try:
        request_kind = RequestKind(kind or ("prompt" if bucket is not None else "recalibration"))
    except ValueError:
        raise B2CalError(f"--kind must be prompt, recalibration or mc, got {kind!r}") from None
    if calibrations is None and bucket is None:
        raise B2CalError("--calibrations is needed for a run range")
    if calibrations is None:  # a bucket's prompt request: the site's list
        calibrations = ",".join(open_site(site).prompt_calibrations)
    names = [n.strip() for n in calibrations.split(",")]
    names = [n for n in names if n]
    overrides = read_config(config, available()) if config is not None else {}
    placement = parse_placement(place)
    open_ended = open_ended or request_kind is RequestKind.PROMPT  # as Belle II prompt does
    if api is not None:
        if bucket is not None or not start:
            raise B2CalError("--api takes a run range (--runs), and always starts the request")
        assert runs is not None
        body = {
            "exp": exp, "runs": list(parse_runs(runs)), "calibrations": names,
            "kind": request_kind.value, "input_tags": input_tag, "reference_tag": reference_tag,
            "config": overrides, "open_ended": open_ended, "place": placement, "dry_run": dry_run,
        }  # fmt: skip
        _create_through(api, body)
        return
    here = open_site(site)
    with state_db(here, create=not dry_run) as db:
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
            draft = draft_request(
                here, request_kind, exp, (first, last), names, input_tag, overrides,
                open_ended, reference_tag, placement,
            )  # fmt: skip
            _print_request_plan(db, draft)
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
            placement=placement,
        )
        console.print(f"created {request.label}, staging tag {request.staging_tag}")
        if start:
            flow_run = start_request(db, request, here)
            console.print(f"started process-request/{here.name}: flow run {flow_run}")
        else:
            console.print(
                f"not started; start it with: prefect deployment run "
                f"process-request/{here.name} --param request_id={request.id}"
            )


def _create_through(url: str, body: dict[str, Any]) -> None:
    from b2cal.api.client import ApiClient
    from b2cal.cli.console import console

    with ApiClient(url) as client:
        done = client.post("/requests", body)
    made = done["request"]
    if done.get("dry_run"):
        console.print(
            f"plan at site {made['site']}: {', '.join(made['calibrations'])} on e{made['exp']} "
            f"runs {made['runs'][0]}-{made['runs'][1]}, input tags "
            f"{', '.join(made['input_tags']) or 'none'}"
        )
        console.print("dry run: nothing was created or started")
        return
    console.print(f"created request {made['id']} at {url}, staging tag {made['staging_tag']}")
    if done.get("flow_run"):
        console.print(f"started process-request/{made['site']}: flow run {done['flow_run']}")


def _print_request_plan(db: StateDatabase, request: Request) -> None:
    """The plan at each site the request runs calibrations at, and where they run."""
    from b2cal.cli.console import console, plan_tables
    from b2cal.processing.placement import in_process
    from b2cal.processing.preparation import calibrations_of, dry_run
    from b2cal.sites import load_site

    calibrations, _ = calibrations_of(request)
    sites = {name: load_site(name) for name in sorted({request.site_of(n) for n in calibrations})}
    with tempfile.TemporaryDirectory(prefix="b2cal-dry-run-") as scratch:
        plans = dry_run(db, sites, request, Path(scratch))
    own = in_process(request, calibrations, {})
    for name, plan in plans.items():
        site = sites[name]
        for table in plan_tables(plan):
            console.print(table)
        console.print(f"at site {name} (pool {site.work_pool}): {', '.join(plan.order)}")
    for name in calibrations:
        if name not in own:
            where = request.site_of(name)
            deps = ", ".join(calibrations[name].depends_on) or "nothing"
            console.print(
                f"{name}: a calibrate/{where} run once {deps} is uploaded (reading payloads "
                "computed at other sites from the staging tag)"
            )
    chain = ["previous iteration", "dependencies' outputs", *request.input_tags]
    console.print(f"request site {request.site}; database chain: {' → '.join(chain)}")
    console.print("dry run: nothing was created or started")


@request_app.command("list")
def request_list(site: SiteOption = None, as_json: Json = False) -> None:
    """Recent requests and how far each has come."""
    from rich.table import Table

    from b2cal.cli.console import console

    here = open_site(site)
    with state_db(here, create=False) as db:
        requests = db.requests()
        runs = {r.id: db.calibration_runs(r.id) for r in requests}
    if as_json:
        sys.stdout.write(
            json.dumps([request_doc(r, runs[r.id]) for r in requests], indent=1) + "\n"
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
            age(r.created),
        )
    console.print(table)


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

    here = open_site(site)
    with state_db(here, create=False) as db:
        request = db.request(request_id)
        runs = db.calibration_runs(request_id)
    if as_json:
        sys.stdout.write(json.dumps(request_doc(request, runs), indent=1) + "\n")
        return
    console.print(
        f"{request.label}: {request.state.value}; site {request.site}; staging tag "
        f"{request.staging_tag}; input tags {', '.join(request.input_tags) or 'none'}"
    )
    if request.placement:
        placed = ", ".join(f"{n} at {where}" for n, where in sorted(request.placement.items()))
        console.print(f"placed at other sites: {placed}")
    console.print(
        calrun_table(runs, f"Calibration runs of request {request.id}", {request.id: request})
    )
    if request.message:
        console.print(f"message: {request.message}")
    if constants:
        for run in runs:
            console.print(constants_table(run))


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
    live, then the table. A crash with an automatic retry pending is waited through. Exit 0
    when it is DONE or waits for sign-offs; 1 when it crashed and its automatic retries are
    used up (the crash named); 2 when a calibration failed or it was cancelled."""
    import time

    from rich.live import Live

    from b2cal.cli.arguments import EXIT_CALIBRATION_FAILED
    from b2cal.cli.console import console, errors
    from b2cal.db import discovery
    from b2cal.db.states import RequestState
    from b2cal.requests.healing import crash_history

    if (request_id is None) == (bucket is None) or (bucket is not None and exp is None):
        raise B2CalError("give a request ID, or --exp E and --bucket N")
    here = open_site(site)
    deadline = time.monotonic() + timeout
    with state_db(here) as db:

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
                title = f"{request.label}: {request.state.value}"
                if request.message:  # a crash, and the automatic retry it waits for
                    title += f" ({request.message})"
                live.update(calrun_table(runs, title))
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
        history = crash_history(db, found)
    console.print(calrun_table(runs, f"{request.label}: {request.state.value}"))
    if request.message:
        console.print(f"message: {request.message}")
    if history.retries:
        console.print(f"automatic retries after a crash: {history.retries}")
    if request.state is RequestState.FAILED and history.gave_up is not None:
        raise B2CalError(f"{request.label} crashed and was not healed: {history.gave_up}")
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
        typer.Option(
            "--here",
            help="Upload from this process (what this site computed) instead of "
            "sign-off runs at each site.",
        ),
    ] = False,
) -> None:
    """Upload the request's approved calibrations that may be uploaded now, and start its
    deferred calibrations that may start (after a sign-off whose upload could not start, an
    upload that failed, a deferred calibration that could not be started)."""
    from b2cal.cdb.connect import open_store
    from b2cal.cli.console import console
    from b2cal.db.states import CalRunState
    from b2cal.requests.deferred import advance, upload_and_advance
    from b2cal.requests.operations import start_upload
    from b2cal.sites import load_site

    where = open_site(site)
    with state_db(where, create=False) as db:
        request = db.request(request_id)
        if here:
            with open_store(where.cdb_database_url) as store:
                report, started = upload_and_advance(db, store, where, request_id)
            console.print(f"uploaded: {', '.join(report.uploaded) or 'nothing'}")
            for name, why in report.blocked.items():
                console.print(f"[yellow]{name} not uploaded[/]: {why}")
        else:
            first: dict[str, int] = {}  # one sign-off run per site that has approved ones
            for c in db.calibration_runs(request_id):
                if c.state is CalRunState.APPROVED:
                    first.setdefault(request.site_of(c.calibration), c.id)
            for name, calrun in sorted(first.items()):
                flow_run = start_upload(load_site(name), calrun)
                console.print(f"upload started: sign-off/{name} flow run {flow_run}")
            started = advance(db, request_id)
            if not first and not started:
                raise B2CalError(
                    f"request {request_id} has no approved calibration to upload and no "
                    "deferred calibration that may start"
                )
    for what in started:
        console.print(f"started {what}")


@request_app.command("rerun")
def request_rerun(
    calibration_run: Annotated[int, typer.Argument(metavar="CALRUN", help="Calibration run id.")],
    site: SiteOption = None,
    start: Annotated[
        bool, typer.Option("--start/--no-start", help="Start the request's run on its site.")
    ] = True,
) -> None:
    """Compute a stopped calibration again (after a rejection, say), with its dependants: a
    new attempt each, needing a new sign-off; unchanged collector jobs are reused."""
    from b2cal.cli.console import console
    from b2cal.requests.operations import rerun_calibration

    with state_db(open_site(site), create=False) as db:
        again, flow_run = rerun_calibration(db, calibration_run, actor(), start=start)
    console.print("rerun: " + ", ".join(f"{c.calibration} (attempt {c.attempt})" for c in again))
    if flow_run:
        console.print(f"started the request's process-request run: flow run {flow_run}")


@request_app.command("skip")
def request_skip(
    calibration_run: Annotated[int, typer.Argument(metavar="CALRUN", help="Calibration run id.")],
    comment: Annotated[str, typer.Option(help="Why (kept in the action log; needed).")] = "",
    site: SiteOption = None,
    start: Annotated[
        bool, typer.Option("--start/--no-start", help="Start the request's run on its site.")
    ] = True,
) -> None:
    """Go on without a calibration (before it started, or once it stopped without being
    uploaded): its dependants use the request's input tags instead of its payloads, and those
    that had stopped are computed again."""
    from b2cal.cli.console import console
    from b2cal.requests.operations import skip_calibration

    with state_db(open_site(site), create=False) as db:
        changed, flow_run = skip_calibration(db, calibration_run, actor(), comment, start=start)
    skipped, *again = changed
    console.print(f"skipped {skipped.label}")
    if again:
        console.print(
            "rerun: " + ", ".join(f"{c.calibration} (attempt {c.attempt})" for c in again)
        )
    if flow_run:
        console.print(f"started the request's process-request run: flow run {flow_run}")


@request_app.command("cancel")
def request_cancel(
    request_id: Annotated[int, typer.Argument(metavar="ID", help="Request id.")],
    site: SiteOption = None,
) -> None:
    """Cancel a request: its calibrations stop, their collector jobs are cancelled."""
    from b2cal.cli.console import console
    from b2cal.requests.operations import cancel_request

    here = open_site(site)
    with state_db(here, create=False) as db:
        cancelled = cancel_request(db, request_id, actor())
    console.print(
        f"request {request_id} cancelled"
        + (f": {', '.join(c.calibration for c in cancelled)} stopped" if cancelled else "")
    )
