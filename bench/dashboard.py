"""The dashboard and the HTTPS API under load, each against a baseline measured in the same run.

1. The overview of 50 buckets x 20 calibrations: server time of b2cal's four-query view (and
   the matrix it renders) against the obvious page that asks for each request's calibration
   runs in turn; queries of each (goal: a constant, not growing with the matrix; time < 1 s).
2. 20 concurrent dashboard sessions through nginx (mutual TLS with a test PKI), each opening
   the overview page every 2 s for SECONDS: p95 latency (goal < 1 s) and errors (goal 0),
   against the same clients fetching a plain page of the dashboard (its refusal page: the
   front's and Tornado's own cost); then the same sessions flat out, for the ceiling. A page
   load is what a session costs the server (Panel builds the page's document then); the
   live updates after it are one shared, cached overview every 5 s.
3. 200 requests/s on the proxy-certificate API (``b2cal api serve`` in its own process; VOMS
   proxies, kept-alive connections) for SECONDS: p95 latency (goal < 1 s) and errors (goal 0),
   ``GET /status`` (the database) against ``GET /whoami`` (TLS and the identity only).
4. 200 slow clients — each from an address of its own, half holding a connection idle, half
   dripping a TLS record a byte a second, reconnecting when cut off — beside the paced
   sessions of 2 on the plain page (nginx and the dashboard's server, not the building of
   pages) and beside the load of 3 on the API, for SECONDS/2 each: the others' p95 and errors
   against the same load alone (goal: ratio near 1, 0 errors). And 200 from one address: how
   many the API holds at once (goal: api_connections_per_address).

Usage: python bench/dashboard.py [SECONDS]   (default 60). Needs nginx (scripts/tools.sh), and
root for nginx's workers to run as www-data as at a site.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table
from sqlalchemy import event

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "tests"), str(HERE.parent)]

import httpx  # noqa: E402
from cli import start_b2cal  # noqa: E402
from nginx_front import dashboard_behind_nginx  # noqa: E402
from pki import PKI  # noqa: E402

from b2cal.auth.names import grid_dn  # noqa: E402
from b2cal.auth.tls import client_context  # noqa: E402
from b2cal.db import users  # noqa: E402
from b2cal.db.database import StateDatabase  # noqa: E402
from b2cal.db.overview import overview  # noqa: E402
from b2cal.db.schema import BucketRow, now  # noqa: E402
from b2cal.db.states import CalRunState  # noqa: E402
from b2cal.sites import RequestKind, load_site  # noqa: E402
from dashboard.pages.overview import matrix  # noqa: E402

BUCKETS, CALIBRATIONS = 50, 20
SESSIONS = 20
#: Seconds between two page loads of one session.
THINK = 2.0
RATE = 200


def fill(db: StateDatabase) -> None:
    names = tuple(f"Cal{i:02d}" for i in range(CALIBRATIONS))
    for number in range(1, BUCKETS + 1):

        def bucket(session, number=number):  # type: ignore[no-untyped-def]
            row = BucketRow(
                site="local",
                exp=1,
                number=number,
                first_run=number,
                last_run=number,
                state="CLOSED",
                opened=now(),
                late_files=0,
            )
            session.add(row)
            session.flush()
            return row.id

        request = db.create_request(
            kind=RequestKind.PROMPT,
            site="local",
            exp=1,
            run_low=number,
            run_high=number,
            calibrations=names,
            input_tags=["base"],
            actor="bench",
            bucket_id=db.write(bucket),
        )
        for i, calrun in enumerate(db.start_request(request.id)):
            for state in (CalRunState.COLLECTING, CalRunState.ALGORITHM)[: i % 3]:
                db.move(calrun.id, state)


def per_request_page(db: StateDatabase) -> int:
    """The baseline page: the requests, then each one's calibration runs."""
    cells = 0
    for request in db.requests(limit=BUCKETS):
        cells += len(db.calibration_runs(request.id))
    return cells


def counted(db: StateDatabase, work: Callable[[], object]) -> int:
    count = [0]

    def one(*_: object) -> None:
        count[0] += 1

    event.listen(db.engine, "before_cursor_execute", one)
    try:
        work()
    finally:
        event.remove(db.engine, "before_cursor_execute", one)
    return count[0]


def timed(work: Callable[[], object], repeats: int = 15) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def load(
    make_client: Callable[[], httpx.Client],
    url: str,
    clients: int,
    seconds: float,
    rate: float | None = None,
) -> tuple[list[float], int]:
    """``clients`` threads asking ``url`` for ``seconds`` (each paced to ``rate``/clients per
    second if given, else as fast as answered): latencies and errors."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def client() -> None:
        interval = clients / rate if rate else 0.0
        with make_client() as http:
            # paced clients start at random moments of their interval, as people do
            due = time.monotonic() + random.uniform(0.0, interval)
            time.sleep(max(0.0, due - time.monotonic()))
            while time.monotonic() < end:
                start = time.perf_counter()
                try:
                    ok = http.get(url).status_code == 200
                except httpx.HTTPError:
                    ok = False
                took = time.perf_counter() - start
                with lock:
                    latencies.append(took)
                    errors[0] += 0 if ok else 1
                if interval:
                    due += interval
                    time.sleep(max(0.0, due - time.monotonic()))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, errors[0]


SLOW = 200


class SlowClients:
    """``count`` clients of ``host:port``, client ``i`` from 127.0.1.(1 + i % 250) or all from
    ``source``: even ones connect and wait, odd ones drip a TLS record (its header announces
    512 bytes) a byte a second; each connects again when the server cuts it off. ``held``:
    how many the server holds now (not closed within half a second of connecting)."""

    def __init__(self, host: str, port: int, count: int, source: str | None = None) -> None:
        self.address, self.count, self.source = (host, port), count, source
        self.stop = threading.Event()
        self.connected: set[int] = set()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.client, args=(i,), daemon=True)
                        for i in range(count)]  # fmt: skip

    def client(self, number: int) -> None:
        source = self.source or f"127.0.1.{1 + number % 250}"
        record = b"\x16\x03\x01\x02\x00" + bytes(512)
        while not self.stop.is_set():
            try:
                with socket.create_connection(self.address, 5, (source, 0)) as sock:
                    sock.settimeout(0.5)  # held, or closed at once by the server?
                    try:
                        if sock.recv(1) == b"":
                            self.stop.wait(0.5)
                            continue
                    except TimeoutError:
                        pass
                    with self.lock:
                        self.connected.add(number)
                    for byte in record if number % 2 else b"":
                        if self.stop.wait(1.0):
                            return
                        sock.sendall(bytes([byte]))
                    sock.settimeout(1.0)
                    while not self.stop.is_set():
                        try:
                            if sock.recv(1) == b"":
                                break  # cut off
                        except TimeoutError:
                            continue
            except OSError:
                pass
            finally:
                with self.lock:
                    self.connected.discard(number)
            self.stop.wait(0.2)

    @property
    def held(self) -> int:
        with self.lock:
            return len(self.connected)

    def __enter__(self) -> SlowClients:
        for thread in self.threads:
            thread.start()
        time.sleep(3.0)  # all connected (or refused) before the measurement
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=10)


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) > 1 else float("nan")


def main() -> int:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 60.0
    console = Console()
    folder = Path(tempfile.mkdtemp(prefix="b2cal-bench-dashboard-"))
    os.environ["B2CAL_HOME"] = str(folder / "home")
    site = load_site("local")
    pki = PKI(folder / "pki")
    host = pki.host("localhost")
    expert = pki.user("Bench Expert")
    db = StateDatabase(site.state_database_url)
    with console.status("filling 50 buckets x 20 calibrations"):
        fill(db)
    grant = [{"role": "expert", "calibrations": []}]
    users.sync(db, [users.Member(grid_dn(expert.cert.subject), grants=grant)], "bench")

    table = Table(title=f"Dashboard and API under load ({seconds:.0f} s each)")
    for column in ("measure", "b2cal", "baseline", "ratio", "goal"):
        table.add_column(column)
    view = timed(lambda: matrix(overview(db)))
    naive = timed(lambda: per_request_page(db))
    queries = counted(db, lambda: overview(db))
    naive_queries = counted(db, lambda: per_request_page(db))
    table.add_row(
        "overview 50x20: server time",
        f"{view * 1000:.1f} ms",
        f"{naive * 1000:.1f} ms (per-request queries)",
        f"{view / naive:.2f}",
        "< 1 s",
    )
    table.add_row(
        "overview 50x20: queries",
        str(queries),
        str(naive_queries),
        f"{queries / naive_queries:.2f}",
        "constant",
    )

    env = dict(os.environ)
    context = client_context(expert.cert_path, expert.key_path, pki.ca_file)
    with dashboard_behind_nginx(env, pki, host, folder, "--site", "local") as front:
        base = front.url
        nginx_port = int(base.rsplit(":", 1)[1])

        def browser() -> httpx.Client:
            return httpx.Client(verify=context, timeout=30)

        with console.status(f"{SESSIONS} sessions on the overview through nginx"):
            # each session opens the overview every THINK seconds (a person reading it)...
            pace = SESSIONS / THINK
            pages, page_errors = load(browser, base + "/overview", SESSIONS, seconds, pace)
            fronts, front_errors = load(browser, base + "/denied", SESSIONS, seconds, pace)
            # ...and, to find the ceiling, as fast as the server answers
            flat, flat_errors = load(browser, base + "/overview", SESSIONS, seconds)
        # The front's own cost (the plain page), alone and beside slow clients: what they could
        # starve is nginx and the dashboard's server, not the building of pages.
        with console.status(f"the plain page beside {SLOW} slow clients of nginx"):
            time.sleep(20)  # the flat-out run's pages are still being built for a while
            alone, alone_errors = load(browser, base + "/denied", SESSIONS, seconds / 2, pace)
            with SlowClients("127.0.0.1", nginx_port, SLOW) as slow:
                beside, beside_errors = load(browser, base + "/denied", SESSIONS, seconds / 2, pace)
                nginx_held = slow.held
        table.add_row(
            f"{SESSIONS} sessions via nginx, a page each {THINK:.0f} s: p95",
            f"{p95(pages) * 1000:.0f} ms",
            f"{p95(fronts) * 1000:.0f} ms (a plain page)",
            f"{p95(pages) / p95(fronts):.1f}",
            "< 1 s",
        )
        table.add_row(
            "  pages, errors", f"{len(pages)}, {page_errors}", f"{len(fronts)}, {front_errors}",
            "", "0 errors",
        )  # fmt: skip
        table.add_row(
            f"{SESSIONS} sessions flat out: pages/s, p95",
            f"{len(flat) / seconds:.0f}/s, {p95(flat) * 1000:.0f} ms",
            f"errors {flat_errors}", "", "",
        )  # fmt: skip
        table.add_row(
            f"  plain page beside {SLOW} slow clients ({nginx_held} held): p95, errors",
            f"{p95(beside) * 1000:.1f} ms, {beside_errors}",
            f"{p95(alone) * 1000:.1f} ms, {alone_errors} (alone)",
            f"{p95(beside) / p95(alone):.2f}",
            "~1, 0 errors",
        )  # fmt: skip

    api_env = {
        "B2CAL_CA_PATH": str(pki.ca_file),
        "B2CAL_CRL_PATH": str(pki.crl_file),
        "B2CAL_VOMS_DIR": str(pki.vomsdir),
        "B2CAL_API_CERT": str(host.cert_path),
        "B2CAL_API_KEY": str(host.key_path),
    }
    acs = pki.voms_acs(expert, ["/belle/Role=calibration"])
    proxy = pki.proxy(expert, acs=acs, label="bench-proxy")
    # The API in its own process, as a site runs it, not sharing this process's interpreter
    # with the clients.
    served = start_b2cal(
        "api", "serve", "--site", "local", "--host", "127.0.0.1", "--port", "0", env=api_env
    )
    line = served.stdout.readline() if served.stdout else ""
    if " on https://" not in line:
        served.kill()
        raise SystemExit(f"the API did not start: {line}{served.communicate()[1]}")
    api = line.split(" on ", 1)[1].split(" ", 1)[0]
    proxy_context = client_context(proxy.cert_path, proxy.key_path, pki.ca_file)

    def script() -> httpx.Client:
        return httpx.Client(verify=proxy_context, timeout=30)

    clients = 16
    api_port = int(api.split(":")[2].split("/", 1)[0])
    try:
        with console.status(f"{RATE} requests/s on the API"):
            status, status_errors = load(script, api + "/status", clients, seconds, RATE)
            whoami, whoami_errors = load(script, api + "/whoami", clients, seconds, RATE)
        with console.status(f"the same beside {SLOW} slow clients of the API"):
            alone, alone_errors = load(script, api + "/status", clients, seconds / 2, RATE)
            with SlowClients("127.0.0.1", api_port, SLOW) as slow:
                beside, beside_errors = load(script, api + "/status", clients, seconds / 2, RATE)
                api_held = slow.held
            with SlowClients("127.0.0.1", api_port, SLOW, source="127.0.0.3") as greedy:
                time.sleep(2.0)
                one_address = greedy.held
    finally:
        served.send_signal(signal.SIGTERM)
        served.communicate(timeout=30)
    table.add_row(
        f"API {RATE}/s, VOMS proxies: p95",
        f"{p95(status) * 1000:.1f} ms (/status)",
        f"{p95(whoami) * 1000:.1f} ms (/whoami)",
        f"{p95(status) / p95(whoami):.2f}",
        "< 1 s",
    )
    table.add_row(
        f"API {RATE}/s: rate reached, errors",
        f"{len(status) / seconds:.0f}/s, {status_errors}",
        f"{len(whoami) / seconds:.0f}/s, {whoami_errors}",
        "",
        "0 errors",
    )
    table.add_row(
        f"  /status beside {SLOW} slow clients ({api_held} held): p95, errors",
        f"{p95(beside) * 1000:.1f} ms, {beside_errors}",
        f"{p95(alone) * 1000:.1f} ms, {alone_errors} (alone)",
        f"{p95(beside) / p95(alone):.2f}",
        "~1, 0 errors",
    )
    table.add_row(
        f"  {SLOW} clients from one address: held at once",
        str(one_address), "", "", "32 (api_connections_per_address)",
    )  # fmt: skip
    console.print(table)
    db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
