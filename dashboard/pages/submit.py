"""A new processing request: its plan shown first (a dry run), submitted only as shown."""

from __future__ import annotations

import panel as pn

from b2cal.caf.registry import available
from b2cal.errors import B2CalError
from b2cal.gateway import actions
from b2cal.requests.operations import draft_request
from b2cal.sites import RequestKind
from dashboard import context
from dashboard.layout import acting, answer_box, esc, link, page, table


def view() -> pn.Column:
    app = context.app()
    who = context.viewer()
    kind = pn.widgets.Select(
        name="kind",
        options=[k.value for k in RequestKind if k is not RequestKind.PROMPT],
        value="recalibration",
    )
    exp = pn.widgets.IntInput(name="experiment", value=1, start=0)
    first = pn.widgets.IntInput(name="first run", value=1, start=0)
    last = pn.widgets.IntInput(name="last run", value=1, start=0)
    calibrations = pn.widgets.MultiChoice(name="calibrations", options=available())
    input_tags = pn.widgets.TextInput(name="input tags (comma-separated; empty: the site's)")
    plan = pn.pane.HTML("")
    box = answer_box()
    check = pn.widgets.Button(name="Show the plan")
    submit = pn.widgets.Button(name="Submit", button_type="primary", disabled=True)
    planned: list[object] = []

    def values() -> tuple[object, ...]:
        return (
            kind.value,
            exp.value,
            first.value,
            last.value,
            tuple(calibrations.value),
            input_tags.value,
        )

    def draft():  # type: ignore[no-untyped-def]
        tags = [t.strip() for t in input_tags.value.split(",") if t.strip()] or None
        return draft_request(
            app.site,
            RequestKind(kind.value),
            exp.value,
            (first.value, last.value),
            calibrations.value,
            tags,
            {},
            False,
        )

    def do_check(_: object) -> None:
        try:
            made = draft()
        except B2CalError as exc:
            plan.object = f"<p class='drift'>{esc(exc)}</p>"
            submit.disabled = True
            return
        plan.object = table(
            ["", ""],
            [
                ("calibrations, in order", ", ".join(made.calibrations)),
                ("runs", f"e{made.exp} r{made.run_low}-{made.run_high}"),
                ("input tags", ", ".join(made.input_tags)),
                ("site", made.site),
            ],
        )
        planned[:] = [values()]
        submit.disabled = False

    def do_submit(_: object) -> None:
        def work() -> str:
            if planned != [values()]:
                raise B2CalError("the form changed since the plan was shown: show it again")
            made, flow_run = actions.submit_request(app.db, context.now(who), app.site, draft())
            app.forget()
            return f"request {made.id} created" + (f"; flow run {flow_run}" if flow_run else "")

        acting(box, work, lambda: setattr(submit, "disabled", True))

    check.on_click(do_check)
    submit.on_click(do_submit)
    return page(
        "New processing request",
        who,
        pn.Row(kind, exp, first, last),
        calibrations,
        input_tags,
        pn.Row(check, submit),
        plan,
        box,
        pn.pane.HTML(f"<p>{link('overview', 'back to the overview')}</p>"),
    )
