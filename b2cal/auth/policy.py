"""Roles, and who may do what.

Roles: a *viewer* sees; an *expert* acts on the calibrations named in the grant (or on all,
for a grant without names): signs them off, retries or cancels their runs, resubmits their jobs,
submits requests; the *coordinator* does all of that for every calibration, alone skips a
calibration run and alone promotes a staging tag into RUNNING; an *admin* manages users (and
sees). Grants come from the user registry (DN → grants, kept in step with the VO) and from the
FQANs of a VOMS proxy, mapped by the site (``/belle/Role=calibration`` → expert of every
calibration).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from b2cal.auth.identity import Identity
from b2cal.errors import B2CalError, NotAllowed


class Role(StrEnum):
    VIEWER = "viewer"
    EXPERT = "expert"
    COORDINATOR = "coordinator"
    ADMIN = "admin"


class Action(StrEnum):
    """What a person may ask b2cal to do (the words of the action log)."""

    VIEW = "view"
    SUBMIT_REQUEST = "submit a request for"
    SIGNOFF = "sign off"
    RETRY = "retry"
    SKIP = "skip"
    CANCEL = "cancel"
    RESUBMIT = "resubmit the collector jobs of"
    PROMOTE = "promote"
    MANAGE_USERS = "manage users of"


@dataclass(frozen=True)
class Grant:
    """A role; for an expert, the calibrations it covers (empty: every calibration)."""

    role: Role
    calibrations: frozenset[str] = field(default_factory=frozenset)

    def covers(self, calibration: str | None) -> bool:
        return not self.calibrations or calibration is None or calibration in self.calibrations

    def describe(self) -> str:
        if self.role is Role.EXPERT and self.calibrations:
            return f"expert of {', '.join(sorted(self.calibrations))}"
        return self.role.value


#: Which roles allow each action; the expert's only for the calibrations of its grant.
_ALLOWED: dict[Action, frozenset[Role]] = {
    Action.VIEW: frozenset(Role),
    Action.SUBMIT_REQUEST: frozenset({Role.EXPERT, Role.COORDINATOR}),
    Action.SIGNOFF: frozenset({Role.EXPERT, Role.COORDINATOR}),
    Action.RETRY: frozenset({Role.EXPERT, Role.COORDINATOR}),
    Action.SKIP: frozenset({Role.COORDINATOR}),
    Action.CANCEL: frozenset({Role.EXPERT, Role.COORDINATOR}),
    Action.RESUBMIT: frozenset({Role.EXPERT, Role.COORDINATOR}),
    Action.PROMOTE: frozenset({Role.COORDINATOR}),
    Action.MANAGE_USERS: frozenset({Role.ADMIN}),
}


def grants_of(
    identity: Identity,
    registered: Iterable[Grant],
    fqan_grants: Mapping[str, Grant] | None = None,
) -> list[Grant]:
    """An identity's grants: those of the registry, and those its FQANs map to (an FQAN
    counts with or without its ``/Capability=NULL`` tail, and ``/Role=NULL`` is none)."""
    grants = list(registered)
    for fqan in identity.fqans:
        short = fqan.removesuffix("/Capability=NULL").removesuffix("/Role=NULL")
        grant = (fqan_grants or {}).get(short) or (fqan_grants or {}).get(fqan)
        if grant is not None and grant not in grants:
            grants.append(grant)
    return grants


def allowed(grants: Iterable[Grant], action: Action, calibration: str | None = None) -> bool:
    roles = _ALLOWED[action]
    return any(
        g.role in roles and (g.role is not Role.EXPERT or g.covers(calibration)) for g in grants
    )


def check(
    identity: Identity,
    grants: Iterable[Grant],
    action: Action,
    target: str,
    calibration: str | None = None,
) -> None:
    """NotAllowed unless the grants allow ``action`` on ``target`` (of ``calibration``).

    A limited proxy only reads, whatever the grants: that is what its holder asked for when
    making it (a proxy handed to a service that should only look)."""
    chosen = list(grants)
    if identity.limited and action is not Action.VIEW:
        raise NotAllowed(
            f"{identity.dn} (by a limited proxy)",
            action.value,
            target,
            "a proxy that is not limited",
        )
    if allowed(chosen, action, calibration):
        return
    roles = sorted(r.value for r in _ALLOWED[action])
    needs = " or ".join(
        f"expert of {calibration}" if r == Role.EXPERT.value and calibration else r for r in roles
    )
    has = ", ".join(g.describe() for g in chosen) or "no role"
    raise NotAllowed(f"{identity.dn} ({has})", action.value, target, needs)


def parse_grant(text: str) -> Grant:
    """``viewer``, ``coordinator``, ``admin``, ``expert`` or ``expert:CalA,CalB``."""
    role, _, names = text.partition(":")
    try:
        chosen = Role(role.strip())
    except ValueError:
        known = ", ".join(r.value for r in Role)
        raise B2CalError(f"{text!r} is not a role (one of {known}, or expert:Cal1,Cal2)") from None
    calibrations = frozenset(n.strip() for n in names.split(",") if n.strip())
    if calibrations and chosen is not Role.EXPERT:
        raise B2CalError(f"{text!r}: only an expert's grant names calibrations")
    return Grant(chosen, calibrations)


def role_map(mapping: Mapping[str, str], vo: str) -> dict[str, Grant]:
    """The site's FQAN → grant table, ``{vo}`` filled in."""
    return {fqan.replace("{vo}", vo): parse_grant(text) for fqan, text in mapping.items()}


def grant_doc(grant: Grant) -> dict[str, object]:
    """A grant as the user registry stores it."""
    return {"role": grant.role.value, "calibrations": sorted(grant.calibrations)}


def grant_from_doc(doc: Mapping[str, object]) -> Grant:
    names = doc.get("calibrations") or []
    return Grant(Role(str(doc["role"])), frozenset(str(n) for n in names))  # type: ignore[attr-defined]
