"""What the commands of the prompt loop share: the site option, the site's state database,
and who is acting."""

from __future__ import annotations

import getpass
import socket
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from b2cal.db.database import StateDatabase
    from b2cal.sites import Site

SiteOption = Annotated[
    str | None,
    typer.Option(metavar="SITE", help="Site (default: B2CAL_SITE, else local)."),
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")]


def actor() -> str:
    """Who is acting: the local account (certificate identities come with the dashboard)."""
    return f"local:{getpass.getuser()}@{socket.gethostname()}"


def open_site(name: str | None) -> Site:
    from b2cal.sites import load_site

    return load_site(name)


def state_db(site: Site, create: bool = True) -> StateDatabase:
    from b2cal.db.database import StateDatabase

    return StateDatabase(site.state_database_url, create=create)
