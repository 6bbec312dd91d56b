"""``b2cal users``: the user registry — who may use the dashboard and the API, with which
grants — listed, synced from the VO, and granted more by an admin."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from b2cal.cli.sites import Json, SiteOption, actor, open_site, state_db
from b2cal.errors import B2CalError

users_app = typer.Typer(
    help="The user registry: list, sync from the VO, grant.", no_args_is_help=True
)


@users_app.command("list")
def users_list(site: SiteOption = None, as_json: Json = False) -> None:
    """Everyone the registry knows: in the VO or not, and the grants that count."""
    from rich.table import Table

    from b2cal.cli.console import console
    from b2cal.db import users

    with state_db(open_site(site), create=False) as db:
        known = users.users(db)
    if as_json:
        doc = [{**u.__dict__, "grants": u.grants} for u in known]
        sys.stdout.write(json.dumps(doc, indent=1) + "\n")
        return
    table = Table(title="User registry")
    for column in ("DN", "name", "in VO", "grants (counting now)"):
        table.add_column(column, overflow="fold")
    for u in known:
        grants = ", ".join(
            g["role"] + (":" + ",".join(g["calibrations"]) if g.get("calibrations") else "")
            for g in u.grants
        )
        table.add_row(u.dn, u.name, "yes" if u.in_vo else "[red]no[/]", grants or "-")
    console.print(table)
    if not known:
        console.print("the registry is empty: b2cal users sync")


@users_app.command("sync")
def users_sync(
    site: SiteOption = None,
    url: Annotated[
        str | None, typer.Option(metavar="URL", help="Member list (default: B2CAL_VO_MEMBERS_URL).")
    ] = None,
    kind: Annotated[
        str | None, typer.Option(metavar="KIND", help="json (b2cal's format) or scim (INDIGO IAM).")
    ] = None,
) -> None:
    """Make the registry what the VO lists now (what the sync-users deployment does)."""
    from b2cal.auth.policy import role_map
    from b2cal.auth.vo_source import fetch_members
    from b2cal.cli.console import console
    from b2cal.processing.users import sync_vo
    from b2cal.settings import Settings

    settings = Settings()
    source = url or settings.vo_members_url
    if not source:
        raise B2CalError("no VO member list: give --url or set B2CAL_VO_MEMBERS_URL")
    token = settings.vo_members_token.get_secret_value() if settings.vo_members_token else None
    members = fetch_members(source, kind or settings.vo_members_kind, token)
    with state_db(open_site(site)) as db:
        report = sync_vo(db, members, role_map(settings.role_map, settings.vo), actor())
    console.print(
        f"{len(members)} members: {len(report.added)} added, {len(report.changed)} changed, "
        f"{len(report.removed)} removed"
    )
    for dn in report.removed:
        console.print(f"[yellow]no longer in the VO, no access[/]: {dn}")


@users_app.command("grant")
def users_grant(
    dn: Annotated[str, typer.Argument(metavar="DN", help="The person's DN (either form).")],
    grants: Annotated[
        list[str],
        typer.Argument(
            metavar="GRANT..",
            help="viewer, expert, expert:Cal1,Cal2, coordinator, admin; none to take all back.",
        ),
    ],
    site: SiteOption = None,
) -> None:
    """Set the grants an admin gives someone besides their VO roles (they count while the VO
    lists the person)."""
    from b2cal.auth.names import normalise_dn
    from b2cal.auth.policy import grant_doc, parse_grant
    from b2cal.cli.console import console
    from b2cal.db import users

    parsed = [] if grants == ["none"] else [parse_grant(g) for g in grants]
    chosen = [grant_doc(g) for g in parsed]
    try:
        grid = normalise_dn(dn)
    except ValueError as exc:
        raise B2CalError(f"{dn!r} is not a DN ({exc})") from None
    with state_db(open_site(site)) as db:
        changed = users.grant(db, grid, chosen, actor())
    note = "" if changed.in_vo else " (not in the VO: they count once a sync finds them there)"
    shown = ", ".join(g.describe() for g in parsed) or "no extra grants"
    console.print(f"{grid}: {shown}{note}")
