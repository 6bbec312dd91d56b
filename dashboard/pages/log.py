"""The action log: who did what to which item, when, and how it ended (refusals included)."""

from __future__ import annotations

import json

import panel as pn

from b2cal.db.overview import when
from dashboard import context
from dashboard.layout import page, table

SHOWN = 200


def view() -> pn.Column:
    app = context.app()
    who = context.viewer()
    rows = [
        (when(a.at), a.actor, a.action, a.target, a.outcome, json.dumps(a.detail)[:200])
        for a in app.db.actions(limit=SHOWN)
    ]
    headers = ["when", "who", "action", "target", "outcome", "detail"]
    return page(f"Action log (latest {SHOWN})", who, pn.pane.HTML(table(headers, rows), name="log"))
