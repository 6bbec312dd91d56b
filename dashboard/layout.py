"""The frame of every page (navigation, who is signed in) and the small pieces pages share:
state colours, tables, links, the answer to an action."""

from __future__ import annotations

import asyncio
import html
import logging
from collections.abc import Callable, Sequence
from typing import Any

import panel as pn

from b2cal.db.states import CalRunState
from b2cal.errors import B2CalError, NotAuthenticated
from b2cal.gateway.actions import Person
from dashboard.context import end_session

S = CalRunState
log = logging.getLogger("b2cal.dashboard")
#: Background colours of calibration-run states (the overview's cells, the badges).
COLOURS = {
    S.PLANNED: "#e8e8e8",
    S.COLLECTING: "#cfe3ff",
    S.ALGORITHM: "#a9cbff",
    S.VALIDATING: "#8fb8f5",
    S.AWAITING_SIGNOFF: "#ffd54f",
    S.APPROVED: "#c5e8b7",
    S.REJECTED: "#f4a6a6",
    S.UPLOADED: "#7fcf6b",
    S.FAILED: "#e57373",
    S.NOT_ENOUGH_DATA: "#ffb74d",
    S.CANCELLED: "#bdbdbd",
    S.SKIPPED: "#d7ccc8",
}
PAGES = [
    ("overview", "Overview"),
    ("submit", "New request"),
    ("cdb", "Conditions DB"),
    ("log", "Action log"),
    ("users", "Users"),
]
CSS = """
table.b2cal { border-collapse: collapse; font-size: 13px; }
table.b2cal th, table.b2cal td { border: 1px solid #ccc; padding: 3px 6px; text-align: left; }
table.b2cal td.cell a { color: #000; text-decoration: none; display: block; }
td.waiting { outline: 3px solid #e65100; font-weight: bold; }
.drift { color: #b71c1c; font-weight: bold; }
"""


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def link(page: str, text: str, **args: Any) -> str:
    query = "&".join(f"{k}={esc(v)}" for k, v in args.items())
    return f"<a href='./{page}{'?' + query if query else ''}'>{esc(text)}</a>"


def badge(state: CalRunState) -> str:
    colour = COLOURS.get(state, "#fff")
    return (
        f"<span style='background:{colour};padding:1px 6px;border-radius:3px'>{state.value}</span>"
    )


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], raw: bool = False) -> str:
    """An HTML table; cells are escaped unless ``raw`` (for cells built with :func:`link`)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{c if raw else esc(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table class='b2cal'><tr>{head}</tr>{body}</table>"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def page(title: str, who: Person, *objects: Any) -> pn.Column:
    nav = " · ".join(link(name, text) for name, text in PAGES)
    grants = who.roles()
    header = pn.pane.HTML(
        f"<div style='font-size:14px'><b>b2cal</b> · {nav}<br>"
        f"<span id='who'>signed in as {esc(who.dn)} ({esc(grants)})</span></div>",
        sizing_mode="stretch_width",
    )
    return pn.Column(header, pn.pane.Markdown(f"## {title}", name="title"), *objects)


def answer_box() -> pn.pane.Alert:
    return pn.pane.Alert("", alert_type="light", visible=False, name="answer")


def acting(box: pn.pane.Alert, work: Callable[[], str], after: Callable[[], None]) -> None:
    """Run an action; its outcome (or the one-line refusal) in ``box``, then refresh.

    The work runs in a thread of its own: b2cal's calls are synchronous (Prefect's client
    among them, which cannot be used from inside the page's event loop), and a slow action
    must not freeze the other sessions' pages meanwhile.
    """

    async def run() -> None:
        try:
            said = await asyncio.to_thread(work)
        except NotAuthenticated as exc:  # the person's certificate is no longer valid
            box.object, box.alert_type = esc(f"{exc}: this page has ended"), "danger"
            box.visible = True
            end_session(exc.reason)
            return
        except B2CalError as exc:
            box.object, box.alert_type = esc(exc), "danger"
        except Exception as exc:
            log.exception("an action failed")
            said = f"internal error: {type(exc).__name__}: {exc} (the dashboard's log has it)"
            box.object, box.alert_type = esc(said), "danger"
        else:
            box.object, box.alert_type = esc(said), "success"
        box.visible = True
        after()

    pn.state.execute(run)


def refused_page(message: str) -> pn.Column:
    return pn.Column(pn.pane.HTML(f"<p class='drift' id='refusal'>{esc(message)}</p>"))


def guarded(view: Callable[[], pn.Column]) -> Callable[[], pn.Column]:
    """A page that shows a refusal (who may not see it, an unknown item) in one line."""

    def page_or_refusal() -> pn.Column:
        try:
            return view()
        except B2CalError as exc:
            return refused_page(str(exc))

    return page_or_refusal


pn.config.raw_css = [*pn.config.raw_css, CSS]
