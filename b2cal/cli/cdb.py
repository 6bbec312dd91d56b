"""``b2cal cdb``: global tags, payloads, upload, promotion, basf2 export and import.

Tables for humans, ``--json`` for scripts. The database is the configured one (``B2CAL_CDB_URL``
or ``b2cal.toml``, default an embedded SQLite store under ``~/.b2cal``) unless ``--db`` names
another. Only ``create`` and ``import`` make a new SQLite database; every other command needs
one that exists (it reads, or writes to a tag that must be there) and refuses a missing one in
one line, leaving no empty file behind.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from b2cal.cdb.model import GlobalTag, Payload, PayloadIoV, parse_state
from b2cal.cdb.rules import IoVChange
from b2cal.cdb.store import ConditionsStore
from b2cal.cli.https_api import ApiOption
from b2cal.core.iov import ExpRun
from b2cal.errors import B2CalError

cdb_app = typer.Typer(
    help="Conditions database: global tags, payloads, upload, promotion.", no_args_is_help=True
)

_DB: dict[str, str | None] = {"url": None}

Json = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")]


@cdb_app.callback()
def _database(
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            help="Conditions database URL (default: B2CAL_CDB_URL, b2cal.toml, or ~/.b2cal).",
        ),
    ] = None,
) -> None:
    _DB["url"] = db


@contextmanager
def _store(create: bool = False) -> Iterator[ConditionsStore]:
    """The database; with ``create``, a new SQLite database is made if there is none."""
    from b2cal.cdb.connect import open_store

    with open_store(_DB["url"], create=create) as store:
        yield store


def _print_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=1, sort_keys=True) + "\n")


def _tag_doc(tag: GlobalTag) -> dict[str, Any]:
    return {"name": tag.name, "state": tag.state.value, "description": tag.description}


def _payload_doc(payload: Payload) -> dict[str, Any]:
    return {
        "name": payload.name,
        "revision": payload.revision,
        "checksum": payload.checksum,
        "size": payload.size,
        "provenance": payload.provenance,
    }


def _iov_doc(entry: PayloadIoV) -> dict[str, Any]:
    return {"iov": str(entry.iov), **_payload_doc(entry.payload)}


def _change_summary(change: IoVChange) -> str:
    if change.empty:
        return "nothing to do: everything was there already"
    parts = [f"{len(change.add)} IoV(s) added"]
    if change.close:
        parts.append(f"{len(change.close)} open-ended IoV(s) closed")
    if change.remove:
        parts.append(f"{len(change.remove)} removed")
    return ", ".join(parts)


def _console_print(renderable: Any) -> None:
    from b2cal.cli.console import console

    console.print(renderable)


@cdb_app.command("tags")
def tags(as_json: Json = False) -> None:
    """List the global tags and their states."""
    with _store() as store:
        found = store.tags()
    if as_json:
        _print_json([_tag_doc(t) for t in found])
        return
    table = Table(title="Global tags")
    for column in ("name", "state", "description"):
        table.add_column(column)
    for tag in found:
        table.add_row(tag.name, tag.state.value, tag.description)
    _console_print(table)


@cdb_app.command("show")
def show(tag: str, as_json: Json = False) -> None:
    """A global tag's state and payload IoVs."""
    with _store() as store:
        info, entries = store.tag(tag), store.iovs(tag)
    if as_json:
        _print_json({**_tag_doc(info), "iovs": [_iov_doc(e) for e in entries]})
        return
    table = Table(title=f"{info.name} ({info.state.value}) {info.description}")
    for column in ("payload", "revision", "IoV", "checksum"):
        table.add_column(column)
    for entry in entries:
        p = entry.payload
        table.add_row(p.name, str(p.revision), str(entry.iov), p.checksum)
    _console_print(table)


@cdb_app.command("get")
def get(
    tag: Annotated[str, typer.Option(help="Global tag, or a chain T1,T2 (first match wins).")],
    name: Annotated[str, typer.Option(help="Payload name.")],
    exp: Annotated[int, typer.Option(help="Experiment.")],
    run: Annotated[int, typer.Option(help="Run.")],
) -> None:
    """Print the payload file valid at (exp, run), unchanged."""
    chain = [t.strip() for t in tag.split(",") if t.strip()]
    with _store() as store:
        found = store.lookup(chain, name, ExpRun(exp, run))
        data = store.payload_data(found.payload)
    sys.stdout.buffer.write(data)
    sys.stdout.flush()


@cdb_app.command("create")
def create(
    tag: str,
    description: Annotated[str, typer.Option(help="What the tag is for.")] = "",
) -> None:
    """Create an empty OPEN global tag."""
    with _store(create=True) as store:
        created = store.create_tag(tag, description)
    _console_print(f"created global tag {created.name} ({created.state.value})")


@cdb_app.command("state")
def state(tag: str, new_state: Annotated[str, typer.Argument(metavar="STATE")]) -> None:
    """Move a global tag to another state: OPEN TESTING VALIDATED PUBLISHED RUNNING INVALID."""
    target = parse_state(new_state)
    with _store() as store:
        before = store.tag(tag).state
        after = store.set_state(tag, target)
    _console_print(f"global tag {tag}: {before.value} -> {after.state.value}")


@cdb_app.command("clone")
def clone(
    source: str,
    target: str,
    description: Annotated[str, typer.Option(help="What the new tag is for.")] = "",
) -> None:
    """Copy a global tag's IoVs into a new OPEN tag."""
    with _store() as store:
        store.clone_tag(source, target, description or f"clone of {source}")
        count = len(store.iovs(target))
    _console_print(f"cloned {source} into {target} (OPEN, {count} IoVs)")


@cdb_app.command("diff")
def diff(a: str, b: str, as_json: Json = False) -> None:
    """What differs between two global tags, by payload name and IoV."""
    from b2cal.cdb.operations import diff_tags

    with _store() as store:
        rows = diff_tags(store, a, b)
    if as_json:
        _print_json(
            [
                {
                    "name": r.name,
                    "iov": str(r.iov),
                    "kind": r.kind,
                    "a": _payload_doc(r.a) if r.a else None,
                    "b": _payload_doc(r.b) if r.b else None,
                }
                for r in rows
            ]
        )
        return
    if not rows:
        _console_print(f"{a} and {b} hold the same payloads for the same IoVs")
        return
    table = Table(title=f"{a} (A) vs {b} (B)")
    for column in ("payload", "IoV", "difference", "A rev", "B rev"):
        table.add_column(column)
    for r in rows:
        table.add_row(
            r.name,
            str(r.iov),
            r.kind,
            str(r.a.revision) if r.a else "-",
            str(r.b.revision) if r.b else "-",
        )
    _console_print(table)


@cdb_app.command("upload")
def upload(
    outputdb: Annotated[Path, typer.Argument(help="A calibration's outputdb/ folder.")],
    tag: Annotated[str, typer.Option(help="Staging global tag (OPEN).")],
) -> None:
    """Upload a calibration output into a staging tag (safe to repeat)."""
    from b2cal.cdb.operations import upload as upload_output

    with _store() as store:
        change = upload_output(store, outputdb, tag)
    _console_print(f"{tag}: {_change_summary(change)}")


@cdb_app.command("promote")
def promote(
    staging: str,
    running: str,
    start: Annotated[
        tuple[int, int],
        typer.Option("--from", metavar="EXP RUN", help="First experiment and run to take over."),
    ],
    api: ApiOption = None,
) -> None:
    """Merge a VALIDATED staging tag into a RUNNING tag from (EXP, RUN) on (here, or with
    --api through a site's HTTPS API as your grid proxy: the coordinator's)."""
    from b2cal.cdb.operations import promote as promote_tag

    if api is not None:
        from b2cal.api.client import ApiClient

        with ApiClient(api) as client:
            done = client.post(f"/tags/{running}/promote", {"staging": staging, "start": start})
        _console_print(
            f"promoted {staging} into {running} at {api}: {len(done['added'])} payload IoVs "
            f"added, {len(done['closed'])} closed"
        )
        return
    with _store() as store:
        change = promote_tag(store, staging, running, ExpRun(*start))
    _console_print(f"promoted {staging} into {running}: {_change_summary(change)}")


@cdb_app.command("export")
def export(
    tag: str,
    directory: Annotated[Path, typer.Argument(help="New folder for the basf2 local database.")],
) -> None:
    """Write a global tag as a basf2 local database (database.txt + payload files)."""
    from b2cal.cdb.operations import export_local_database

    with _store() as store:
        count = export_local_database(store, tag, directory)
    _console_print(f"exported {count} IoVs of {tag} to {directory}")


@cdb_app.command("import")
def import_(
    directory: Annotated[Path, typer.Argument(help="A basf2 local database folder.")],
    tag: Annotated[str, typer.Option(help="Global tag to import into (created OPEN if new).")],
) -> None:
    """Import a basf2 local database into a global tag."""
    from b2cal.cdb.operations import import_local_database

    with _store(create=True) as store:
        change = import_local_database(store, directory, tag)
    _console_print(f"{tag}: {_change_summary(change)}")


@cdb_app.command("payloads")
def payloads(
    name: Annotated[str | None, typer.Option(help="Only this payload name.")] = None,
    where: Annotated[
        list[str] | None,
        typer.Option(help="Provenance KEY=VALUE to match, e.g. calibration_run=3f2a9c (repeat)."),
    ] = None,
    as_json: Json = False,
) -> None:
    """Find payloads by name and provenance (which calibration run made them, from what)."""
    wanted: dict[str, tuple[Any, ...]] = {}
    for item in where or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise B2CalError(f"--where takes KEY=VALUE, got {item!r}")
        wanted[key] = _json_values(value)
    missing = object()
    with _store() as store:
        found = [
            p
            for p in store.find_payloads(name)
            if all(_among(p.provenance.get(key, missing), values) for key, values in wanted.items())
        ]
    if as_json:
        _print_json([_payload_doc(p) for p in found])
        return
    table = Table(title="Payloads")
    for column in ("payload", "revision", "checksum", "calibration", "calibration run", "iter."):
        table.add_column(column)
    for p in found:
        prov = p.provenance
        table.add_row(
            p.name,
            str(p.revision),
            p.checksum,
            str(prov.get("calibration", "-")),
            str(prov.get("calibration_run", "-")),
            str(prov.get("iteration", "-")),
        )
    _console_print(table)


def _json_values(text: str) -> tuple[Any, ...]:
    """What ``KEY=text`` matches: the string, and the JSON value the text reads as (``3``
    matches the number 3 and the string "3"): a calibration run id is a hex string that can
    read as a number (``174383332323``, ``12e4``)."""
    try:
        return (text, json.loads(text))
    except json.JSONDecodeError:
        return (text,)


def _among(value: Any, values: tuple[Any, ...]) -> bool:
    """``value`` is one of ``values``, of the same JSON type (``true`` is not ``1``)."""
    return any(type(value) is type(v) and value == v for v in values)
