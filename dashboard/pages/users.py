"""The user registry: who may use the dashboard and the API, with which grants."""

from __future__ import annotations

import panel as pn

from b2cal.db import users
from dashboard import context
from dashboard.layout import page, table


def view() -> pn.Column:
    app = context.app()
    who = context.viewer()
    rows = [
        (
            u.dn,
            u.name,
            "yes" if u.in_vo else "no (no access)",
            ", ".join(
                g["role"] + (":" + ",".join(g["calibrations"]) if g.get("calibrations") else "")
                for g in u.grants
            )
            or "-",
        )
        for u in users.users(app.db)
    ]
    return page(
        "Users and roles", who, pn.pane.HTML(table(["DN", "name", "in VO", "grants"], rows))
    )
