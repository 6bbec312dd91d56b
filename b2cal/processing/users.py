"""The user registry kept in step with the VO, and the grants of an identity: the glue between
the VO's member list (:mod:`b2cal.auth.vo`), the registry (:mod:`b2cal.db.users`) and the
policy (:mod:`b2cal.auth.policy`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from b2cal.auth.identity import Identity
from b2cal.auth.policy import Grant, grant_doc, grant_from_doc, grants_of
from b2cal.auth.vo import VoMember
from b2cal.db import users
from b2cal.db.database import StateDatabase


def member_grants(roles: Sequence[str], mapping: Mapping[str, Grant]) -> list[Grant]:
    """The grants a member's VO roles give (as a proxy's FQANs would)."""
    return grants_of(Identity("", tuple(roles)), [], mapping)


def sync_vo(
    db: StateDatabase, members: Sequence[VoMember], mapping: Mapping[str, Grant], actor: str
) -> users.SyncReport:
    """The registry made what the VO lists now: members added or updated with the grants of
    their roles, those it no longer lists without access."""
    return users.sync(
        db,
        [
            users.Member(
                m.dn, m.name, m.email, [grant_doc(g) for g in member_grants(m.roles, mapping)]
            )
            for m in members
        ],
        actor,
    )


def grants_for(db: StateDatabase, identity: Identity, mapping: Mapping[str, Grant]) -> list[Grant]:
    """An identity's grants: the registry's (only while the VO lists it) and its proxy's FQANs'
    (which the VO's VOMS server vouched for)."""
    registered = users.user(db, identity.dn)
    docs = registered.grants if registered is not None else []
    return grants_of(identity, [grant_from_doc(d) for d in docs], mapping)


def standing(db: StateDatabase, dn: str) -> str:
    """Where the registry has someone, in words for a refusal or ``whoami``: a person the VO
    dropped is in the registry (with their grants, kept for their return), not unknown."""
    registered = users.user(db, dn)
    if registered is None:
        return "not in the registry"
    if not registered.in_vo:
        return "in the registry, but the VO no longer lists them"
    return "in the registry and the VO"
