"""One request: what it calibrates, where, with which tags; its calibration runs; cancel."""

from __future__ import annotations

import panel as pn

from b2cal.db.overview import when
from b2cal.db.states import RequestState
from b2cal.errors import UnknownRecord
from b2cal.gateway import actions
from dashboard import context
from dashboard.layout import (
    acting,
    answer_box,
    badge,
    duration,
    esc,
    link,
    page,
    refused_page,
    table,
)

OVER = {RequestState.DONE, RequestState.FAILED, RequestState.CANCELLED}


def view() -> pn.Column:
    app = context.app()
    who = context.viewer()
    try:
        request_id = int(context.argument("id") or "")
        request = app.db.request(request_id)
    except (ValueError, UnknownRecord):
        return refused_page(f"no request {context.argument('id')!r}")
    calruns = pn.pane.HTML("")

    def reload() -> None:
        rows = []
        for c in app.db.calibration_runs(request_id):
            seconds = (c.finished - c.started).total_seconds() if c.started and c.finished else None
            rows.append(
                (
                    link("calrun", c.calibration, id=c.id),
                    badge(c.state),
                    esc(c.attempt),
                    esc(request.site_of(c.calibration)),
                    duration(seconds),
                    esc(c.message),
                )
            )
        calruns.object = table(
            ["calibration", "state", "attempt", "site", "took", "message"], rows, raw=True
        )

    reload()
    facts = [
        ("kind", request.kind.value),
        ("state", request.state.value),
        ("site", request.site),
        ("experiment", request.exp),
        ("runs", f"{request.run_low}-{request.run_high}"),
        ("input tags", ", ".join(request.input_tags)),
        ("staging tag", request.staging_tag),
        ("reference tag", request.reference_tag or "the site's RUNNING tag"),
        ("created", f"{when(request.created)} by {request.created_by}"),
        ("message", request.message or ""),
    ]
    parts: list[object] = [pn.pane.HTML(table(["", ""], facts)), calruns]
    if request.state not in OVER:
        box = answer_box()
        cancel = pn.widgets.Button(name="Cancel the request", button_type="danger")

        def do_cancel(_: object) -> None:
            def work() -> str:
                cancelled = actions.cancel(app.db, context.now(who), request_id)
                return f"cancelled {len(cancelled)} calibration runs and their collector jobs"

            acting(box, work, lambda: (app.forget(), reload()))

        cancel.on_click(do_cancel)
        parts += [cancel, box]
    return page(f"Request {request.id}", who, *parts)
