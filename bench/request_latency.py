"""Where a request's time goes before and between its computations, on the local stack.

Against ``b2cal caf run`` of the same bucket (the baseline, timed in turn with the requests):
* request vs ``caf run`` at three sizes (four reference calibrations, two workers): the fixed
  cost of a request and what grows with its jobs;
* start latency, from the command's start to the first collector job started, split into its
  parts: the ``b2cal request create`` process until the flow run exists (its own work measured
  apart, in this process with its imports done); the flow run Scheduled -> Pending (the
  worker's poll and submission), Pending -> Running (the launcher, Prefect's supervisor and
  engine processes starting and importing, the flow's module loaded), Running -> first
  collector job submitted (b2cal's flow: plan, subflow, collection written); and the same for a
  request made with ``prefect deployment run calibration-request/local``, the Prefect CLI's own
  start reported apart;
* stage gaps of every request: last collector job -> algorithm start, dependency payloads
  written -> dependant's first job submitted (bench/prompt_request.py measures them the same);
* the Prefect server's "database is locked" retries during the bench, and the API writes of
  each calibration.

Usage: python bench/request_latency.py [--postgres] [SIZES [REPEATS]]
SIZES: comma-separated run counts of the buckets (default 2,6,18; two files per run and stream
of 4000 events), REPEATS: timed runs of each (default 2). ``--postgres`` runs the Prefect
server on a fresh database of the PostgreSQL server on 127.0.0.1:5432 (dropped afterwards).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from common import EXP, free_port, make_storage, stack_home
from prompt_request import CALIBRATIONS, api_writes, first_submitted, job_times, stage_gaps
from rich.console import Console
from rich.table import Table

from b2cal.caf.workspace import Workspace

BIN = Path(sys.executable).parent
ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@dataclass
class Timeline:
    """One request, from its command's start (UNIX times)."""

    path: str
    size: int
    launched: float
    command_done: float = 0.0
    created: float = 0.0  # the flow run
    pending: float = 0.0
    running: float = 0.0
    first_submitted: float = 0.0
    first_started: float = 0.0
    done: float = 0.0
    request_id: int = 0
    gaps: tuple[list[float], list[float]] = field(default_factory=lambda: ([], []))


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database for the Prefect server (pg_trgm in it), dropped after."""
    from sqlalchemy import create_engine, text

    name = f"b2cal_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name}"))
    url = ADMIN.rsplit("/", 1)[0] + f"/{name}"
    inside = create_engine(url, isolation_level="AUTOCOMMIT")
    with inside.connect() as connection:
        connection.execute(text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
    inside.dispose()
    try:
        yield url.replace("postgresql+psycopg://", "postgresql+asyncpg://")
    finally:
        with admin.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


def locked_retries(log: Path) -> Counter[str]:
    """The server's retried requests whose cause was SQLite's "database is locked", by the
    API function that was answering."""
    entries = re.split(r"\n(?=\d\d:\d\d:\d\d\.\d+ \| )", log.read_text(errors="replace"))
    found: Counter[str] = Counter()
    for entry in entries:
        if "Encountered retryable exception" in entry and "database is locked" in entry:
            where = re.findall(r"prefect/server/api/(\w+)\.py\", line \d+, in (\w+)", entry)
            found[".".join(where[-1]) if where else "?"] += 1
    return found


def flow_run_times(flow_run_id: str) -> tuple[float, float, float]:
    """(created, first Pending, first Running) of a flow run, as UNIX times."""
    from uuid import UUID

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(flow_run_id))
        states = client.read_flow_run_states(UUID(flow_run_id))
    assert run.created is not None
    first = {}
    for state in sorted(states, key=lambda s: s.timestamp):
        first.setdefault(state.type.value, state.timestamp.timestamp())
    return run.created.timestamp(), first.get("PENDING", 0.0), first.get("RUNNING", 0.0)


def first_started(workspace: Workspace) -> float:
    return min(start for name in CALIBRATIONS for start, _ in job_times(workspace, name)[0])


def main() -> int:
    args = [a for a in sys.argv[1:] if a != "--postgres"]
    postgres = "--postgres" in sys.argv[1:]
    sizes = [int(s) for s in args[0].split(",")] if args else [2, 6, 18]
    repeats = int(args[1]) if len(args) > 1 else 2
    console = Console(width=150)
    folder = Path(tempfile.mkdtemp(prefix="b2cal-bench-latency-"))
    storage = make_storage(events=4000, files_per_run=2, runs=list(range(1, max(sizes) + 1)))
    stack_home(folder, storage)

    from b2cal.cli import main as b2cal_main
    from b2cal.db import discovery
    from b2cal.db.database import StateDatabase
    from b2cal.orchestrator.stack import LocalStack, StackOptions
    from b2cal.sites import load_site

    with contextlib.ExitStack() as cleanup:
        database = cleanup.enter_context(postgres_database()) if postgres else None
        if database:  # the variable, not the option: the bench runs older checkouts too
            os.environ["B2CAL_PREFECT_DATABASE_URL"] = database
        stack = LocalStack()
        state = stack.up(StackOptions(port=free_port(), sites=("local",), discover=False))
        cleanup.callback(stack.down)
        os.environ["PREFECT_API_URL"] = state["api_url"]
        site = load_site("local")
        db = StateDatabase(site.state_database_url)
        cleanup.callback(db.close)
        discovery.discover(db, site)
        server_log = stack.log("server")
        locked_before = locked_retries(server_log)
        timelines: list[Timeline] = []
        create_args = ["--exp", str(EXP), "--calibrations", ",".join(CALIBRATIONS)]

        def wait_done(line: Timeline) -> None:
            while db.request(line.request_id).state.value not in ("DONE", "FAILED", "CANCELLED"):
                time.sleep(0.1)
            line.done = time.time()
            assert db.request(line.request_id).state.value == "DONE", line

        def finish(line: Timeline, flow_run_id: str) -> None:
            wait_done(line)
            line.created, line.pending, line.running = flow_run_times(flow_run_id)
            workspace = Workspace(site.request_folder(line.request_id) / "output")
            line.first_submitted = min(first_submitted(workspace, n) for n in CALIBRATIONS)
            line.first_started = first_started(workspace)
            line.gaps = stage_gaps(workspace)
            timelines.append(line)

        def request(size: int) -> None:
            line = Timeline("b2cal request create", size, time.time())
            made = subprocess.run(
                [str(BIN / "b2cal"), "request", "create", "--runs", f"1-{size}", *create_args],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            line.command_done = time.time()
            line.request_id = int(re.findall(r"created request (\d+)", made.stdout)[0])
            finish(line, re.findall(r"flow run ([0-9a-f-]{36})", made.stdout)[0])

        def caf_run(size: int) -> None:
            output = folder / f"caf-{uuid.uuid4().hex[:8]}"
            subprocess.run(
                [str(BIN / "b2cal"), "caf", "run", "--storage", str(storage), "--exp", str(EXP),
                 "--runs", f"1-{size}", "--calibrations", ",".join(CALIBRATIONS),
                 "--output", str(output), "--workers", "2"],
                capture_output=True, check=True,
            )  # fmt: skip
            shutil.rmtree(output)

        def prefect_run(size: int) -> None:
            line = Timeline("prefect deployment run", size, time.time())
            made = subprocess.run(
                [str(BIN / "prefect"), "deployment", "run", "calibration-request/local",
                 "-p", f"exp={EXP}", "-p", f"runs=1-{size}",
                 "-p", "calibrations=" + str(list(CALIBRATIONS)).replace("'", '"')],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            line.command_done = time.time()
            flow_run_id = re.findall(r"UUID: ([0-9a-f-]{36})", made.stdout)[0]
            while (found := db.request_of_flow_run(flow_run_id)) is None:
                time.sleep(0.1)
            line.request_id = found.id
            finish(line, flow_run_id)

        own: list[float] = []

        def in_process(size: int) -> None:
            """``request create`` with its imports done: its own work (API, database)."""
            started = time.perf_counter()
            with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
                status = b2cal_main(["request", "create", "--runs", f"1-{size}", *create_args])
            own.append(time.perf_counter() - started)
            assert status == 0
            line = Timeline("in process", size, 0.0, request_id=db.requests(limit=1)[0].id)
            wait_done(line)

        caf_run(sizes[0])  # warm the page cache and the imports' files
        in_process(sizes[0])  # the imports of this process, not timed
        own.clear()
        walls: dict[tuple[str, int], list[float]] = {}
        for _ in range(repeats):
            for size in sizes:
                started = time.perf_counter()
                caf_run(size)
                walls.setdefault(("caf run", size), []).append(time.perf_counter() - started)
                request(size)
                walls.setdefault(("request", size), []).append(
                    timelines[-1].done - timelines[-1].launched
                )
            prefect_run(sizes[0])
            in_process(sizes[0])
        locked = locked_retries(server_log) - locked_before
        writes = api_writes(timelines[-1].request_id)

    med = statistics.median
    server = "PostgreSQL" if postgres else "SQLite"
    table = Table(title=f"request through the local stack (Prefect on {server}) / b2cal caf run")
    for column in ("runs", "files", "caf run (s)", "request (s)", "ratio", "request - caf run (s)"):
        table.add_column(column, justify="right")
    for size in sizes:
        caf, req = med(walls[("caf run", size)]), med(walls[("request", size)])
        table.add_row(str(size), str(4 * size), f"{caf:.1f}", f"{req:.1f}", f"{req / caf:.2f}",
                      f"{req - caf:.1f}")  # fmt: skip
    console.print(table)

    parts = Table(title="start latency, medians (s)")
    for column in ("part", "b2cal request create", "prefect deployment run", "whose"):
        parts.add_column(column)
    kinds = ("b2cal request create", "prefect deployment run")

    def row(name: str, whose: str, value: object) -> None:
        cells = []
        for kind in kinds:
            lines = [t for t in timelines if t.path == kind]
            values = [value(t) for t in lines] if callable(value) else []
            cells.append(f"{med(values):.2f}" if values else "-")
        parts.add_row(name, *cells, whose)

    row("command start -> flow run created", "CLI imports + work", lambda t: t.created - t.launched)
    row("  whole command (until it exits)", "", lambda t: t.command_done - t.launched)
    parts.add_row("  request create's own work (imports done)", f"{med(own):.2f}", "-", "b2cal")
    row("flow run created -> Pending", "Prefect: worker poll", lambda t: t.pending - t.created)
    row("Pending -> Running", "Prefect processes + imports", lambda t: t.running - t.pending)
    row("Running -> first collector job submitted", "b2cal",
        lambda t: t.first_submitted - t.running)  # fmt: skip
    row("first job submitted -> started", "b2cal backend",
        lambda t: t.first_started - t.first_submitted)  # fmt: skip
    row("command start -> first collector job started", "total",
        lambda t: t.first_started - t.launched)  # fmt: skip
    row("flow run created -> first collector job started", "",
        lambda t: t.first_started - t.created)  # fmt: skip
    console.print(parts)

    algorithm = [g for t in timelines for g in t.gaps[0]]
    dependant = [g for t in timelines for g in t.gaps[1]]
    gaps = Table(title=f"stage gaps over {len(timelines)} requests and orchestration writes")
    for column in ("what", "value"):
        gaps.add_column(column)
    for what, values in (
        ("last collector job -> algorithm start", algorithm),
        ("dependency outputdb -> dependant's first job submitted", dependant),
    ):
        spread = f"median {med(values):.2f} s, worst {max(values):.2f} s ({len(values)} gaps)"
        gaps.add_row(what, spread)
    said = ", ".join(f"{n} {where}" for where, n in locked.most_common())
    gaps.add_row('"database is locked" retries of the server', f"{locked.total()} ({said})")
    gaps.add_row("Prefect API writes per calibration (last request)",
                 ", ".join(f"{n} {c}" for n, c in sorted(writes.items())))  # fmt: skip
    console.print(gaps)
    console.print(f"medians of {repeats} interleaved runs, {datetime.now():%Y-%m-%d %H:%M}; "
                  f"4 calibrations, 2 files per run and stream of 4000 events")  # fmt: skip
    shutil.rmtree(folder)
    shutil.rmtree(storage.parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
