"""One calibration run: where it stands, the actions on it, its iterations with the
algorithm's result per IoV, its collector jobs, its validation against the payloads it
replaces, its trend across buckets with drift flags, and its Prefect flow runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import holoviews as hv
import holoviews.plotting.bokeh  # registers the bokeh backend the plots use
import panel as pn

from b2cal.db.model import CalibrationRun, Request
from b2cal.db.overview import calibration_history, when
from b2cal.db.states import CalRunState, SignoffDecision
from b2cal.errors import B2CalError, UnknownRecord
from b2cal.gateway import actions
from b2cal.gateway.actions import Person
from b2cal.processing.trends import trend
from b2cal.processing.workspace_view import collector_job_rows, iteration_rows
from dashboard import context
from dashboard.layout import acting, answer_box, badge, esc, link, page, refused_page, table

S = CalRunState
RETRYABLE = {S.FAILED, S.REJECTED, S.NOT_ENOUGH_DATA, S.CANCELLED}
SKIPPABLE = {S.FAILED, S.REJECTED, S.NOT_ENOUGH_DATA, S.AWAITING_SIGNOFF, S.CANCELLED}
LOG_LINES = 5


def view() -> pn.Column:
    app = context.app()
    who = context.viewer()
    try:
        calrun_id = int(context.argument("id") or "")
        calrun = app.db.calibration_run(calrun_id)
    except (ValueError, UnknownRecord):
        return refused_page(f"no calibration run {context.argument('id')!r}")
    request = app.db.request(calrun.request_id)
    head = pn.pane.HTML(_head(calrun, request))
    box = answer_box()

    def reload() -> None:
        fresh = app.db.calibration_run(calrun_id)
        head.object = _head(fresh, request)

    return page(
        f"{calrun.calibration} · calibration run {calrun.id}",
        who,
        head,
        _actions(calrun, who, box, reload),
        box,
        pn.pane.Markdown("### Validation against the reference"),
        *_validation(calrun),
        pn.pane.Markdown("### Iterations"),
        pn.pane.HTML(_iterations(request, calrun)),
        pn.pane.Markdown("### Collector jobs"),
        pn.pane.HTML(_jobs(request, calrun)),
        pn.pane.Markdown("### Trend across buckets"),
        *_trend(calrun, request),
        pn.pane.Markdown("### Prefect flow runs"),
        pn.pane.HTML(_flow_runs(calrun, request)),
    )


def _head(calrun: CalibrationRun, request: Request) -> str:
    rows = [
        ("state", badge(calrun.state)),
        (
            "request",
            link(
                "request",
                f"request {request.id} ({request.kind.value}, "
                f"e{request.exp} r{request.run_low}-{request.run_high})",
                id=request.id,
            ),
        ),
        ("attempt", esc(calrun.attempt)),
        ("iteration", esc(calrun.iteration)),
        ("started", esc(when(calrun.started))),
        ("finished", esc(when(calrun.finished))),
        ("message", esc(calrun.message)),
    ]
    body = "".join(f"<tr><th>{k}</th><td id='calrun-{k}'>{v}</td></tr>" for k, v in rows)
    return f"<table class='b2cal'>{body}</table>"


def _actions(calrun: CalibrationRun, who: Person, box: pn.pane.Alert, reload: Any) -> pn.Column:
    app = context.app()
    shown = calrun.attempt  # acting on what this page showed: a rerun since is refused
    comment = pn.widgets.TextInput(name="comment", placeholder="why (needed to reject or skip)")
    approve = pn.widgets.Button(name="Approve", button_type="success")
    reject = pn.widgets.Button(name="Reject", button_type="danger")
    retry = pn.widgets.Button(name="Retry", button_type="primary")
    skip = pn.widgets.Button(name="Skip (coordinator)", button_type="warning")
    resubmit = pn.widgets.Button(name="Resubmit failed jobs", button_type="default")

    def done() -> None:
        app.forget()
        reload()
        show_for(app.db.calibration_run(calrun.id).state, approve, reject, retry, resubmit, skip)

    def decide(decision: SignoffDecision) -> None:
        def work() -> str:
            signed, followup = actions.sign_off(
                app.db, context.now(who), calrun.id, decision, _typed(comment), attempt=shown
            )
            return f"{decision.value}d by {signed.actor}. {followup}"

        acting(box, work, done)

    def do_retry(_: object) -> None:
        def work() -> str:
            again, flow_run = actions.retry(app.db, context.now(who), calrun.id, attempt=shown)
            names = ", ".join(f"{c.calibration} (attempt {c.attempt})" for c in again)
            return f"rerunning {names}" + (f": flow run {flow_run}" if flow_run else "")

        acting(box, work, done)

    def do_skip(_: object) -> None:
        def work() -> str:
            if not _typed(comment).strip():
                raise B2CalError("skipping needs a comment saying why")
            actions.skip(app.db, context.now(who), calrun.id, _typed(comment), attempt=shown)
            return f"{calrun.calibration} skipped: its dependants use the input tags"

        acting(box, work, done)

    def do_resubmit(_: object) -> None:
        def work() -> str:
            chosen = actions.resubmit(app.db, context.now(who), calrun.id, attempt=shown)
            return f"collector jobs {', '.join(map(str, chosen))} start afresh at the next run"

        acting(box, work, done)

    approve.on_click(lambda _: decide(SignoffDecision.APPROVE))
    reject.on_click(lambda _: decide(SignoffDecision.REJECT))
    retry.on_click(do_retry)
    skip.on_click(do_skip)
    resubmit.on_click(do_resubmit)
    every = [approve, reject, retry, resubmit, skip]
    show_for(calrun.state, approve, reject, retry, resubmit, skip)
    return pn.Column(pn.pane.Markdown("### Act"), comment, pn.Row(*every))


def show_for(state: CalRunState, *buttons: pn.widgets.Button) -> None:
    """Only the actions that make sense in ``state`` are offered (the policy still decides)."""
    approve, reject, retry, resubmit, skip = buttons
    approve.visible = reject.visible = state is S.AWAITING_SIGNOFF
    retry.visible = resubmit.visible = state in RETRYABLE
    skip.visible = state in SKIPPABLE


def _validation(calrun: CalibrationRun) -> list[Any]:
    summary = calrun.summary or {}
    if not summary:
        return [pn.pane.HTML("<p>not validated yet</p>")]
    verdict = "passed" if summary.get("passed") else "FAILED"
    lines = [
        f"<p id='validation'>validation <b>{verdict}</b> against "
        f"{esc(summary.get('reference_tag') or 'no reference tag')}</p>"
    ]
    lines += [f"<p class='drift'>problem: {esc(p)}</p>" for p in summary.get("problems", [])]
    fields = summary.get("fields", [])
    rows = [
        (
            f.get("iov"),
            f.get("field"),
            f.get("size"),
            _num(f.get("mean")),
            _num(f.get("change"), "+.4g"),
            _num(f.get("max_abs_pull"), ".2f"),
            f.get("flagged") or "",
        )
        for f in fields
    ]
    headers = ["IoV", "field", "n", "mean", "change vs replaced", "max |pull|", "flagged"]
    parts: list[Any] = [pn.pane.HTML("".join(lines) + table(headers, rows))]
    for plot in summary.get("plots", []):
        if Path(plot).is_file():
            parts.append(pn.pane.PNG(plot, width=520))
    return parts


def _num(value: Any, form: str = ".4g") -> str:
    return "" if value is None else format(float(value), form)


NOT_VISIBLE = "<p>its workspace is not visible from this site</p>"


def _iterations(request: Request, calrun: CalibrationRun) -> str:
    rows = iteration_rows(request, calrun)
    if rows is None:
        return NOT_VISIBLE
    if not rows:
        return "<p>no iteration yet</p>"
    shown = [(r.iteration, r.result, r.iov, r.algorithm, r.message) for r in rows]
    return table(["iteration", "result", "IoV", "algorithm", "message"], shown)


def _jobs(request: Request, calrun: CalibrationRun) -> str:
    rows = collector_job_rows(request, calrun, LOG_LINES)
    if rows is None:
        return NOT_VISIBLE
    if not rows:
        return "<p>no collector jobs yet</p>"
    shown = [
        (j.iteration, j.number, j.state, j.attempts, j.files,
         "" if j.seconds is None else f"{j.seconds:.1f}", j.host, j.error, j.log_tail)
        for j in rows
    ]  # fmt: skip
    headers = ["iteration", "job", "state", "attempts", "files", "seconds", "host", "error",
               "log tail"]  # fmt: skip
    return table(headers, shown)


def _trend(calrun: CalibrationRun, request: Request) -> list[Any]:
    app = context.app()
    points = app.cached(
        ("history", calrun.calibration, request.site),
        lambda: calibration_history(app.db, calrun.calibration, site=request.site),
    )
    values = trend(calrun.calibration, points, app.settings.drift_tolerance)
    if not values:
        return [pn.pane.HTML("<p>no validated buckets yet</p>")]
    plots = []
    for name in sorted({v.field for v in values}):
        mine = [v for v in values if v.field == name]
        data = [(v.label, v.mean) for v in mine]
        curve = hv.Curve(data, "bucket", name).opts(width=420, height=220, title=name)
        curve = curve * hv.Scatter(data, "bucket", name).opts(size=5)
        drifted = [(v.label, v.mean) for v in mine if v.drift]
        plots.append(curve * hv.Scatter(drifted, "bucket", name).opts(color="red", size=9))
    flagged = [
        (v.label, v.field, f"{v.mean:.4g}", f"{v.step:+.4g}") for v in values if v.drift
    ]  # v.step is set wherever drift is
    parts: list[Any] = [pn.pane.HoloViews(hv.Layout(plots).cols(2), backend="bokeh")]
    if flagged:
        parts.append(
            pn.pane.HTML(
                "<p class='drift' id='drift'>drift beyond tolerance:</p>"
                + table(["bucket", "field", "mean", "step"], flagged)
            )
        )
    return parts


def _in_prefect_ui(ui: str | None, path: str, text: str) -> str:
    """``text`` linked to a page of the Prefect UI, when one is known (escaped either way)."""
    return f"<a href='{esc(ui)}/{esc(path)}'>{esc(text)}</a>" if ui else esc(text)


def _flow_runs(calrun: CalibrationRun, request: Request) -> str:
    from b2cal.orchestrator.client import flow_run_log_tail, flow_runs_tagged, ui_url

    app = context.app()
    tags = [f"request:{request.id}", f"calib:{calrun.calibration}"]
    try:
        runs = app.cached(("flow-runs", *tags), lambda: flow_runs_tagged(tags), seconds=5.0)
    except B2CalError as exc:
        return f"<p>the Prefect API cannot be asked: {esc(exc)}</p>"
    ui = ui_url()
    rows = [
        (
            _in_prefect_ui(ui, f"runs/flow-run/{r['id']}", r["name"]),
            esc(r["state"]),
            esc(when(r["start"])),
            f"{r['seconds']:.0f}",
        )
        for r in runs
    ]
    if not rows:
        return "<p>no flow runs carry its tags</p>"
    newest = runs[0]["id"]
    try:
        tail = app.cached(("flow-run-log", newest), lambda: flow_run_log_tail(newest), 5.0)
    except B2CalError as exc:
        tail = [f"its log cannot be read: {exc}"]
    log = "<p>log of the newest (last lines):</p><pre id='flow-run-log'>"
    log += esc("\n".join(tail) or "(nothing logged)") + "</pre>"
    shown = table(["flow run", "state", "started", "seconds"], rows, raw=True)
    return shown + log + _artifacts(runs, ui)


def _artifacts(runs: list[dict[str, Any]], ui: str | None) -> str:
    """What the flow runs left in Prefect (a calibrate run's validation summary and constants
    table), in one call for all of them."""
    from b2cal.orchestrator.client import flow_run_artifacts

    ids = [r["id"] for r in runs]
    try:
        made = context.app().cached(("artifacts", *ids), lambda: flow_run_artifacts(ids), 5.0)
    except B2CalError as exc:
        return f"<p>their artifacts cannot be read: {esc(exc)}</p>"
    if not made:
        return "<p>their artifacts: none</p>"
    names = {r["id"]: r["name"] for r in runs}
    rows = [
        (
            _in_prefect_ui(ui, f"artifacts/artifact/{a['id']}", a["key"]),
            esc(a["type"]),
            esc(names.get(a["flow_run_id"], a["flow_run_id"])),
            esc(when(a["created"])),
        )
        for a in made
    ]
    found = table(["artifact", "type", "flow run", "made"], rows, raw=True)
    return f"<div id='artifacts'><p>their artifacts (Prefect):</p>{found}</div>"


def _typed(box: pn.widgets.TextInput) -> str:
    """What is in the box now: ``value_input`` follows each keystroke, ``value`` only Enter
    or leaving the box, and a click on a button may come first."""
    return str(box.value_input or box.value or "")
