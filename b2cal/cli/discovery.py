"""``b2cal discover`` and ``b2cal bucket``: new data files registered, runs grouped into
buckets, a closed bucket's prompt request started."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from b2cal.cli.sites import Json, SiteOption, actor, open_site, state_db
from b2cal.cli.views import age

if TYPE_CHECKING:
    from b2cal.db.database import StateDatabase
    from b2cal.db.model import Request
    from b2cal.sites import Site

bucket_app = typer.Typer(
    help="Buckets: run ranges of new data, one prompt request each.", no_args_is_help=True
)
files_app = typer.Typer(
    help="Data files found bad (unreadable, or unreadable when a collector broke on them).",
    no_args_is_help=True,
)


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

    here = open_site(site)
    with state_db(here) as db:
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
    from b2cal.orchestrator.client import check_reachable
    from b2cal.requests.operations import create_prompt_request, start_request

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

    here = open_site(site)
    with state_db(here, create=False) as db:
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
            age(b.opened),
            age(b.closed),
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

    here = open_site(site)
    with state_db(here, create=False) as db:
        closed = discovery.close_bucket(db, here.name, exp, bucket, actor())
        console.print(f"closed {closed.label}: runs {closed.first_run}-{closed.last_run}")
        if start:
            request = _start_prompt(db, here, closed.id)
            console.print(f"started {request.label}")


@files_app.command("bad")
def files_bad(site: SiteOption = None, as_json: Json = False) -> None:
    """The files of the site marked bad, and why; new requests leave them out."""
    from rich.table import Table

    from b2cal.cli.console import console
    from b2cal.db import discovery
    from b2cal.db.states import FileStatus

    here = open_site(site)
    with state_db(here, create=False) as db:
        bad = discovery.files(db, here.name, FileStatus.BAD)
    if as_json:
        doc = [{"path": f.path, "run": f.run, "stream": f.stream, "reason": f.reason} for f in bad]
        sys.stdout.write(json.dumps(doc, indent=1) + "\n")
        return
    table = Table(title=f"Bad files at site {here.name}")
    for column in ("path", "run", "reason"):
        table.add_column(column, overflow="fold")
    for f in bad:
        table.add_row(f.path, str(f.run or ""), f.reason or "")
    console.print(table if bad else f"no bad files at site {here.name}")


@files_app.command("clear")
def files_clear(
    path: Annotated[str, typer.Argument(help="The file, as `b2cal files bad` lists it.")],
    site: SiteOption = None,
) -> None:
    """Clear a file's bad mark (repaired, or marked wrongly): the next discovery reads it again
    and registers it (or marks it bad again, saying why)."""
    from b2cal.cli.console import console
    from b2cal.db import discovery

    here = open_site(site)
    with state_db(here, create=False) as db:
        cleared = discovery.clear_bad(db, here.name, path, actor())
    console.print(f"{cleared.path}: mark cleared; the next discovery looks at it again")
