"""The user registry of the state database: who may use the dashboard and the API, with which
grants, kept in step with the VO.

A sync replaces the VO part of every row with what the VO lists now: members it lists are
added or updated, members it no longer lists lose their access at once (the row is kept, its
grants with it, for the day they come back); grants an admin added stay, but count only while
the VO lists the person. Every change is one transaction and goes into the action log.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from b2cal.db.database import StateDatabase
from b2cal.db.rows import add_action
from b2cal.db.schema import UserRow, now

GrantDoc = dict[str, Any]


@dataclass(frozen=True)
class User:
    dn: str
    name: str
    email: str
    in_vo: bool
    vo_grants: list[GrantDoc]
    extra_grants: list[GrantDoc]

    @property
    def grants(self) -> list[GrantDoc]:
        """What counts now: nothing once the VO no longer lists them."""
        return [*self.vo_grants, *self.extra_grants] if self.in_vo else []


@dataclass(frozen=True)
class Member:
    """A VO member as a sync writes it: DN, name, email and the grants its roles map to."""

    dn: str
    name: str = ""
    email: str = ""
    grants: list[GrantDoc] = field(default_factory=list)


@dataclass
class SyncReport:
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


def dn_key(dn: str) -> str:
    return hashlib.sha256(dn.encode()).hexdigest()


def users(db: StateDatabase) -> list[User]:
    def work(session: Session) -> list[User]:
        return [_value(row) for row in session.scalars(select(UserRow).order_by(UserRow.dn))]

    return db.read(work)


def user(db: StateDatabase, dn: str) -> User | None:
    def work(session: Session) -> User | None:
        row = session.scalar(select(UserRow).where(UserRow.dn_key == dn_key(dn)))
        return _value(row) if row is not None else None

    return db.read(work)


def sync(db: StateDatabase, members: Sequence[Member], actor: str) -> SyncReport:
    """Make the registry's VO part what ``members`` say (the whole VO, as listed now)."""
    listed = {member.dn: member for member in members}

    def work(session: Session) -> SyncReport:
        report = SyncReport()
        moment = now()
        rows = {row.dn: row for row in session.scalars(select(UserRow).with_for_update())}
        for dn, member in sorted(listed.items()):
            row = rows.get(dn)
            if row is None:
                session.add(
                    UserRow(
                        dn_key=dn_key(dn),
                        dn=dn,
                        name=member.name,
                        email=member.email,
                        in_vo=True,
                        vo_grants=member.grants,
                        extra_grants=[],
                        synced=moment,
                        updated=moment,
                    )
                )
                report.added.append(dn)
                continue
            before = (row.name, row.email, row.in_vo, row.vo_grants)
            after = (member.name or row.name, member.email or row.email, True, member.grants)
            row.synced = moment
            if before != after:
                row.name, row.email, row.in_vo, row.vo_grants = after
                row.updated = moment
                report.changed.append(dn)
        for dn, row in rows.items():
            if dn not in listed and row.in_vo:
                row.in_vo, row.synced, row.updated = False, moment, moment
                report.removed.append(dn)
        if report.added or report.changed or report.removed:
            detail = {"added": report.added, "changed": report.changed, "removed": report.removed}
            add_action(session, actor, "sync users", "the user registry", "ok", detail)
        return report

    return db.write(work)


def grant(db: StateDatabase, dn: str, grants: list[GrantDoc], actor: str) -> User:
    """Set the grants an admin gives ``dn`` (besides its VO roles); they count while the VO
    lists the person. A DN the registry does not know yet is added, outside the VO until a
    sync finds it there."""

    def work(session: Session) -> User:
        moment = now()
        row = session.scalar(select(UserRow).where(UserRow.dn_key == dn_key(dn)).with_for_update())
        if row is None:
            row = UserRow(
                dn_key=dn_key(dn),
                dn=dn,
                name="",
                email="",
                in_vo=False,
                vo_grants=[],
                extra_grants=[],
                synced=None,
                updated=moment,
            )
            session.add(row)
        row.extra_grants, row.updated = list(grants), moment
        add_action(session, actor, "grant", dn, "ok", {"grants": grants})
        return _value(row)

    return db.write(work)


def _value(row: UserRow) -> User:
    return User(
        dn=row.dn,
        name=row.name,
        email=row.email,
        in_vo=row.in_vo,
        vo_grants=list(row.vo_grants),
        extra_grants=list(row.extra_grants),
    )
