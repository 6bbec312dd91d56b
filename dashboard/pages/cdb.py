"""The conditions database: tags and their states, payload IoVs, a payload's provenance (what
made it), the diff of two tags, and promotion of a staging tag into RUNNING (the
coordinator's, with the change shown first)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import panel as pn

from b2cal.cdb.connect import open_store
from b2cal.cdb.operations import diff_tags, preview_promotion
from b2cal.cdb.rules import IoVChange
from b2cal.cdb.store import ConditionsStore
from b2cal.core.iov import ExpRun
from b2cal.errors import B2CalError
from b2cal.gateway import actions
from b2cal.gateway.actions import Person
from dashboard import context
from dashboard.layout import acting, answer_box, esc, page, table


@contextmanager
def store() -> Iterator[ConditionsStore]:
    with open_store(context.app().site.cdb_database_url) as opened:
        yield opened


def view() -> pn.Column:
    app = context.app()
    who = context.viewer()
    with store() as cdb:
        tags = cdb.tags()
    names = [t.name for t in tags]
    tag_table = pn.pane.HTML(
        table(
            ["tag", "state", "description"], [(t.name, t.state.value, t.description) for t in tags]
        )
    )
    chosen = pn.widgets.Select(name="tag", options=names, value=names[0] if names else None)
    iovs = pn.pane.HTML("")
    payload = pn.widgets.Select(name="payload (for its provenance)", options=[])
    provenance = pn.pane.HTML("")

    def show_tag(*_: object) -> None:
        if not chosen.value:
            return
        with store() as cdb:
            entries = cdb.iovs(chosen.value)
        iovs.object = table(
            ["payload", "revision", "IoV", "checksum"],
            [(e.name, e.payload.revision, str(e.iov), e.payload.checksum[:12]) for e in entries],
        )
        payload.options = {f"{e.name} r{e.payload.revision} {e.iov}": e for e in entries}

    def show_provenance(*_: object) -> None:
        entry = payload.value
        if entry is None:
            provenance.object = ""
            return
        text = json.dumps(entry.payload.provenance, indent=1, sort_keys=True)
        provenance.object = f"<pre id='provenance'>{esc(text)}</pre>"

    chosen.param.watch(show_tag, "value")
    payload.param.watch(show_provenance, "value")
    show_tag()

    a = pn.widgets.Select(name="A", options=names)
    b = pn.widgets.Select(name="B", options=names)
    diff = pn.pane.HTML("")
    compare = pn.widgets.Button(name="Compare")

    def do_diff(_: object) -> None:
        with store() as cdb:
            rows = diff_tags(cdb, a.value, b.value)
        diff.object = (
            table(
                ["payload", "IoV", "difference", "A", "B"],
                [
                    (
                        r.name,
                        str(r.iov),
                        r.kind,
                        r.a.revision if r.a else "-",
                        r.b.revision if r.b else "-",
                    )
                    for r in rows
                ],
            )
            if rows
            else "<p>the two tags hold the same payloads</p>"
        )

    compare.on_click(do_diff)
    return page(
        "Conditions database",
        who,
        tag_table,
        pn.Row(chosen, payload),
        iovs,
        provenance,
        pn.pane.Markdown("### Diff of two tags"),
        pn.Row(a, b, compare),
        diff,
        _promotion(names, app.site.running_tag, who),
    )


def _promotion(names: list[str], running: str, who: Person) -> pn.Column:
    app = context.app()
    staging = pn.widgets.Select(
        name="staging tag", options=[n for n in names if n.startswith("staging-")]
    )
    target = pn.widgets.Select(
        name="into", options=names, value=running if running in names else None
    )
    exp = pn.widgets.IntInput(name="from experiment", value=1, start=0)
    run = pn.widgets.IntInput(name="from run", value=1, start=0)
    plan = pn.pane.HTML("")
    box = answer_box()
    preview = pn.widgets.Button(name="Show the change")
    promote = pn.widgets.Button(name="Promote", button_type="danger", disabled=True)
    previewed: list[tuple[tuple[object, ...], list[tuple[str, str, str]]]] = []

    def values() -> tuple[object, ...]:
        return (staging.value, target.value, exp.value, run.value)

    def do_preview(_: object) -> None:
        try:
            with store() as cdb:
                change = preview_promotion(
                    cdb, staging.value, target.value, ExpRun(exp.value, run.value)
                )
        except B2CalError as exc:
            plan.object = f"<p class='drift'>{esc(exc)}</p>"
            promote.disabled = True
            return
        plan.object = table(["change", "payload", "IoV"], _rows(change))
        previewed[:] = [(values(), _rows(change))]
        promote.disabled = False

    def do_promote(_: object) -> None:
        def work() -> str:
            if not previewed or previewed[0][0] != values():
                raise B2CalError("the values changed since the change was shown: show it again")
            start = ExpRun(exp.value, run.value)
            with store() as cdb:
                again = preview_promotion(cdb, str(staging.value), str(target.value), start)
            if _rows(again) != previewed[0][1]:
                raise B2CalError("the tags changed since the change was shown: show it again")
            with store() as cdb:
                change = actions.promote(
                    app.db,
                    context.now(who),
                    cdb,
                    str(staging.value),
                    str(target.value),
                    ExpRun(exp.value, run.value),
                )
            return f"promoted: {len(change.add)} payload IoVs added to {target.value}"

        acting(box, work, lambda: setattr(promote, "disabled", True))

    preview.on_click(do_preview)
    promote.on_click(do_promote)
    return pn.Column(
        pn.pane.Markdown("### Promote a staging tag (coordinator)"),
        pn.Row(staging, target, exp, run),
        pn.Row(preview, promote),
        plan,
        box,
    )


def _rows(change: IoVChange) -> list[tuple[str, str, str]]:
    """A promotion's change as the page shows it (and compares it before doing it)."""
    rows = [("add", p.name, str(iov)) for p, iov in change.add]
    return rows + [("close", old.payload.name, str(iov)) for old, iov in change.close]
