"""What every flow shares: the site, its records, its backend, names and tags for the UI."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from prefect import get_run_logger
from prefect.client.schemas.objects import State

from b2cal.backends.base import Backend
from b2cal.backends.registry import open_backend
from b2cal.caf.collection import JOB_TARGET
from b2cal.caf.executions import AlgorithmPool
from b2cal.cdb.connect import open_store
from b2cal.cdb.store import ConditionsStore
from b2cal.db.database import StateDatabase
from b2cal.errors import B2CalError, DatabaseError, NopayloaddbError, OrchestratorUnreachable
from b2cal.orchestrator.client import prefect_client
from b2cal.sites import Site, load_site

_backends: dict[str, Backend] = {}
_pools: dict[str, AlgorithmPool] = {}
_backends_lock = threading.Lock()


def site_of(name: str | None) -> Site:
    """The named site, else this worker's (``B2CAL_SITE``)."""
    return load_site(name)


def pool_site(name: str | None) -> Site:
    """The site a deployment run is asked to work for, which must be its pool's (the
    worker's ``B2CAL_SITE``): ``-p site=bnl`` on ``process-request/local`` is refused."""
    here = os.environ.get("B2CAL_SITE")
    if name and here and name != here:
        raise B2CalError(
            f"site {name!r} is not the site of this work pool ({here}): run the deployment "
            f"named after that site instead (…/{name})"
        )
    return load_site(name or here)


def name_and_tag(name: str, tags: Sequence[str]) -> None:
    """Name this flow run and add ``tags`` to it: a run started with ``prefect deployment
    run`` carries only its deployment's tags, and the UI's filters and b2cal's views find a
    request's runs by tag (``request:17``)."""
    from uuid import UUID

    from prefect.runtime import flow_run

    if not flow_run.id:
        return
    try:
        with prefect_client() as client:
            current = client.read_flow_run(UUID(flow_run.id))
            wanted = list(dict.fromkeys([*current.tags, *tags]))
            if current.name != name or wanted != current.tags:
                client.update_flow_run(UUID(flow_run.id), name=name, tags=wanted)
    except Exception as exc:  # a label is not worth the request: said, and the run goes on
        get_run_logger().warning("this run could not be named %r and tagged: %s", name, exc)


#: Errors of the services a run reaches, not of its input: raised (a crash, healed), never
#: turned into a refusal that would end the request for good.
NOT_INPUT = (DatabaseError, OrchestratorUnreachable, NopayloaddbError)


#: What the state message and the log line of a refused run begin with.
REFUSED = "refused: "


def refused(line: str) -> State[Any]:
    """End a flow run whose input is wrong: its log and its state message say why in one
    line, and nothing was made. Returned (not raised) by the flow, so Prefect's "Encountered
    exception" traceback is not logged; the one it logs for every run that ends Failed is
    dropped by :class:`_SaidInOneLine`."""
    from prefect.states import Failed

    get_run_logger().error(REFUSED + line)
    return Failed(message=REFUSED + line)


class _SaidInOneLine(logging.Filter):
    """Drops the engine's "exited with unexpected exception" traceback of a refused run: a
    person's wrong input is not a program error, and its reason is in the log already."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return error is None or not str(error).startswith(REFUSED)


logging.getLogger("prefect.flow_runs").addFilter(_SaidInOneLine())


@contextmanager
def records(site: Site) -> Iterator[tuple[StateDatabase, ConditionsStore]]:
    """The site's state database and conditions database, closed afterwards."""
    db = StateDatabase(site.state_database_url)
    try:
        store = open_store(site.cdb_database_url)
        try:
            yield db, store
        finally:
            store.close()
    finally:
        db.close()


def site_backend(site: Site) -> Backend:
    """The site's collector backend, one per flow-run process (calibrations in one process
    share its workers and its job limit; it is closed when the process ends)."""
    with _backends_lock:
        backend = _backends.get(site.name)
        if backend is None:
            backend = open_backend(site.backend)
            backend.preload([JOB_TARGET])
            _backends[site.name] = backend
            atexit.register(backend.close)
        return backend


def algorithm_pool(site: Site) -> AlgorithmPool:
    """The processes that run algorithm executions, ``[backend] workers`` of them, one pool per
    flow-run process (calibrations in one process take turns in it; it is closed when the
    process ends). Asked for early, so its workers import while the collection runs."""
    with _backends_lock:
        pool = _pools.get(site.name)
        if pool is None:
            pool = AlgorithmPool(site.backend.workers)
            _pools[site.name] = pool
            atexit.register(pool.close)
        return pool


def start_backend(site: Site) -> None:
    """Open the site's backend ahead of the first collection: a local backend's workers start
    and import what jobs need (~2 s on two busy cores) while the request is planned, instead
    of after its first job is submitted. A backend that cannot open is left to that first
    collection to report, as before."""
    with contextlib.suppress(Exception):
        site_backend(site)


_outputs: dict[tuple[int, str], threading.Event] = {}

#: Set when the flow-run process is told to stop (cancel, SIGTERM): nothing new starts, and
#: the collector jobs of every calibration in the process are stopped.
stopping = threading.Event()


def stop_everything() -> None:
    """Stop the process's work at once: collections see ``stopping``, workers are ended."""
    stopping.set()
    with _backends_lock:
        backends = list(_backends.values())
        pools = list(_pools.values())
        for ready in _outputs.values():
            ready.set()  # dependants waiting for an output wake up, and see ``stopping``
    for backend in backends:
        backend.close()
    for pool in pools:
        pool.close()


_here: set[tuple[int, str]] = set()


def run_here(request_id: int, calibrations: Sequence[str]) -> None:
    """These calibrations of the request run in this process (``process-request``): their
    dependants here wait for their :func:`output_written`."""
    with _backends_lock:
        _here.update((request_id, name) for name in calibrations)


def awaited_here(request_id: int, dependencies: Sequence[str]) -> list[str]:
    """The ``dependencies`` that run in this process, whose output a dependant waits for."""
    with _backends_lock:
        return [dep for dep in dependencies if (request_id, dep) in _here]


def output_written(request_id: int, calibration: str) -> threading.Event:
    """Set once the calibration's ``outputdb`` is written (or it ended without one): its
    dependants in the same process start on it, not on its flow run's return."""
    with _backends_lock:
        return _outputs.setdefault((request_id, calibration), threading.Event())


class StartTurns:
    """Subflows of one process begin one at a time (a turn ends when the subflow's body has
    begun, or its start failed).

    Creating flow runs at the same moment makes a Prefect server on SQLite answer 503
    ("database is locked"), and its client then waits seconds before trying again; taking
    turns costs a few milliseconds per subflow instead.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held = threading.local()

    @contextmanager
    def turn(self) -> Iterator[None]:
        self._lock.acquire()
        self._held.value = True
        try:
            yield
        finally:
            self.begun()

    def begun(self) -> None:
        """The subflow's body has begun (the same thread that took the turn): the turn ends,
        and the body's task runs are made without tags (:func:`untagged_tasks`)."""
        untagged_tasks()
        if getattr(self._held, "value", False):
            self._held.value = False
            self._lock.release()


subflow_turns = StartTurns()


def untagged_tasks() -> None:
    """The task runs this flow body makes from here on carry no tags (the ``with tags(…)``
    that made its flow run puts the tags back when the run returns).

    The tags name a request's flow runs (``request:17``, ``calib:ChannelT0``: the UI's filters
    and b2cal's views find runs by them); on a task run they cost a write: before it runs a
    task with tags, Prefect asks the API for a slot of the concurrency limit ``tag:<tag>`` of
    each, an UPDATE even where no such limit exists. On SQLite those were the writes that
    collided ("database is locked", retried by the client 2 s later: docs/orchestration.md).
    b2cal's jobs are limited by the site's ``job_limit``, not by tags.
    """
    from prefect.context import TagsContext

    TagsContext.__var__.set(TagsContext())
