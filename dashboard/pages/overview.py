"""Buckets and requests × calibrations, coloured by state, waiting sign-offs outlined;
filtered by experiment, site and kind; refreshed every few seconds."""

from __future__ import annotations

import panel as pn

from b2cal.db.overview import Overview, overview
from b2cal.errors import NotAuthenticated
from b2cal.sites import RequestKind, site_names
from dashboard import context
from dashboard.layout import COLOURS, duration, esc, link, page, table

REFRESH_MS = 5000


def matrix(data: Overview) -> str:
    head = ["request", "kind", "site", "runs", "state", *data.calibrations]
    rows = []
    for row in data.rows:
        r = row.request
        cells = [
            link("request", row.label, id=r.id),
            esc(r.kind.value),
            esc(r.site),
            f"{r.run_low}-{r.run_high}",
            esc(r.state.value),
        ]
        for name in data.calibrations:
            cell = row.cells.get(name)
            if cell is None:
                cells.append("")
                continue
            text = f"{cell.state.value}<br><small>{duration(cell.seconds)}"
            text += f" · attempt {cell.attempt}</small>" if cell.attempt > 1 else "</small>"
            style = f"background:{COLOURS.get(cell.state, '#fff')}"
            css = "cell waiting" if cell.waiting else "cell"
            title = esc(cell.message or "")
            cells.append(
                f"<td class='{css}' style='{style}' title='{title}' id='calrun-{cell.calrun_id}'>"
                f"<a href='./calrun?id={cell.calrun_id}'>{text}</a></td>"
            )
        rows.append(cells)
    head_html = "".join(f"<th>{esc(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in cells) + "</tr>"
        for cells in rows
    )
    return f"<table class='b2cal' id='matrix'><tr>{head_html}</tr>{body}</table>"


def view() -> pn.Column:
    app = context.app()
    who = context.viewer()
    exp = pn.widgets.IntInput(name="experiment (0: all)", value=0, start=0, width=140)
    sites = pn.widgets.Select(name="site", options=["all", *site_names()], value="all", width=140)
    kinds = ["all", *(k.value for k in RequestKind)]
    kind = pn.widgets.Select(name="kind", options=kinds, value="all", width=140)
    body = pn.pane.HTML("", sizing_mode="stretch_width")
    waiting = pn.pane.HTML("")
    buckets = pn.pane.HTML("")

    def refresh(*_: object) -> None:
        filters = (
            exp.value or None,
            None if sites.value == "all" else sites.value,
            None if kind.value == "all" else kind.value,
        )
        # Rendered once per cache period for every session with these filters.
        shown = app.cached(("overview", *filters), lambda: rendered(*filters))
        for pane, html in zip((body, waiting, buckets), shown, strict=True):
            if pane.object != html:  # a session is sent only what changed
                pane.object = html

    def rendered(exp: int | None, site: str | None, kind: str | None) -> tuple[str, str, str]:
        data = overview(app.db, exp=exp, site=site, kind=kind)
        waiting = (
            "<p><b>awaiting sign-off:</b> "
            + ", ".join(
                link("calrun", f"{c.calibration} (calibration run {c.calrun_id})", id=c.calrun_id)
                for c in data.waiting
            )
            + "</p>"
            if data.waiting
            else ""
        )
        buckets = (
            table(
                ["open bucket", "site", "runs so far", "run range"],
                [
                    (f"e{b.exp} bucket {b.number}", b.site, b.runs, f"{b.first_run}-{b.last_run}")
                    for b in data.open_buckets
                ],
            )
            if data.open_buckets
            else ""
        )
        return (matrix(data) if data.rows else "<p>no requests yet</p>", waiting, buckets)

    def live() -> None:
        try:
            context.still(who)  # a page left open: its person's certificate judged again
        except NotAuthenticated as exc:
            body.object = f"<p class='drift' id='refusal'>{esc(exc)}: this page has ended</p>"
            context.end_session(exc.reason)
            return
        refresh()

    for widget in (exp, sites, kind):
        widget.param.watch(refresh, "value")
    refresh()
    # Live updates once a browser has connected: a page fetched and never shown (or a session
    # whose browser is gone) costs the server nothing more.
    pn.state.onload(lambda: pn.state.add_periodic_callback(live, period=REFRESH_MS))
    return page(
        f"Calibrations at a glance (site {app.site.name})",
        who,
        pn.Row(exp, sites, kind),
        waiting,
        body,
        buckets,
    )
