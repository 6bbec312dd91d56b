"""``sync-users``: the user registry made what the VO lists now (scheduled per site, off until
a site turns it on): members added or updated with the grants of their roles, members the VO
no longer lists without access. A list that cannot be read fails the run and changes nothing.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from b2cal.auth.policy import role_map
from b2cal.auth.vo_source import fetch_members
from b2cal.errors import B2CalError
from b2cal.processing.users import sync_vo
from b2cal.settings import Settings
from flows.common import records, site_of

ACTOR = "b2cal (VO sync)"


@flow(name="sync-users", flow_run_name="sync users")
def sync_users(site: str | None = None) -> dict[str, list[str]]:
    """Sync the registry from ``B2CAL_VO_MEMBERS_URL``; returns who was added, changed, removed."""
    settings = Settings()
    if not settings.vo_members_url:
        raise B2CalError("no VO member list is configured (B2CAL_VO_MEMBERS_URL)")
    token = settings.vo_members_token.get_secret_value() if settings.vo_members_token else None
    members = fetch_members(settings.vo_members_url, settings.vo_members_kind, token)
    with records(site_of(site)) as (db, _):
        report = sync_vo(db, members, role_map(settings.role_map, settings.vo), ACTOR)
    get_run_logger().info(
        "%d members: %d added, %d changed, %d removed",
        len(members),
        len(report.added),
        len(report.changed),
        len(report.removed),
    )
    return {"added": report.added, "changed": report.changed, "removed": report.removed}
