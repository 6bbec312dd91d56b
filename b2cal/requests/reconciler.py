"""The reconciler: a service process per site, started by ``b2cal server up`` beside the site's
worker (never a run in the site's own pool, whose worker may be what died), that compares
Prefect's flow-run states with b2cal's records every ``reconcile_seconds`` and heals what it
finds (:mod:`b2cal.requests.healing` says what).

A crash is seen within the heartbeat timeout (Prefect's automation marks a run whose process
and worker are both gone Crashed) plus one period; a run whose worker is alive is marked
Crashed by the worker at once, and a run on this host whose process is gone is marked Crashed
here, in one period. Prefect is read before b2cal's records are read again, so a flow run that
ended normally has written its calibration runs' end before the reconciler looks at them.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from b2cal.core.processes import ProcessRecord
from b2cal.db.database import StateDatabase
from b2cal.orchestrator import discovery_runs
from b2cal.orchestrator.client import prefect_client
from b2cal.processing.area import RequestArea
from b2cal.processing.jobs import cancel_left_jobs
from b2cal.requests.healing import (
    Decision,
    FlowRunView,
    Verdict,
    Watched,
    decide,
    launched_process,
    record,
    recorded_process,
    retries_made,
    watched_runs,
)
from b2cal.sites import Site

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient

log = logging.getLogger("b2cal.reconciler")
#: Flow runs asked for in one API call (Prefect's server answers at most 200).
PAGE = 200


def flow_run_views(client: SyncPrefectClient, ids: Sequence[str]) -> dict[str, FlowRunView]:
    """Prefect's word on these flow runs (those it does not know are left out)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    wanted = []
    for value in dict.fromkeys(ids):
        try:
            wanted.append(UUID(value))
        except ValueError:
            continue
    runs = []
    for start in range(0, len(wanted), PAGE):  # the API answers at most 200 at a time
        chunk = wanted[start : start + PAGE]
        runs += client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=chunk)), limit=len(chunk)
        )
    views = {}
    for run in runs:
        if run.state is None:
            continue
        since = run.state.timestamp or datetime.now(UTC)
        views[str(run.id)] = FlowRunView(
            str(run.id), run.state.type.value, run.state.message or "", since
        )
    return views


def act(site: Site, db: StateDatabase, client: SyncPrefectClient, decision: Decision) -> bool:
    """Carry a decision out: Prefect's side first (a retry that Prefect refuses is not
    recorded as made), then b2cal's. Returns whether it was carried out."""
    from prefect.client.schemas.responses import SetStateStatus
    from prefect.states import Crashed, Failed, Scheduled

    def set_state(state: Any, force: bool) -> bool:
        flow_run = UUID(decision.watched.flow_run_id)
        result = client.set_flow_run_state(flow_run, state, force=force)
        return bool(result.status == SetStateStatus.ACCEPT)

    verdict = decision.verdict
    if verdict is Verdict.NOTHING:
        return False
    if verdict is Verdict.MARK_CRASHED:
        return set_state(Crashed(message=decision.line), force=False)
    if verdict is Verdict.RETRY and not set_state(Scheduled(message=decision.line), force=True):
        return False
    if verdict is Verdict.GIVE_UP:  # Failed: the notification webhook hears of it
        set_state(Failed(message=decision.line), force=True)
    record(db, decision)
    if verdict is Verdict.CANCEL:  # batch jobs outlive the process that was stopped
        area = RequestArea(site.request_folder(decision.watched.request_id))
        if area.workspace.exists():
            for calibration in area.workspace.run_record().calibrations:
                cancel_left_jobs(site.backend, area.workspace, calibration)
    return True


def process_of(area: RequestArea, flow_run_id: str, state: str | None) -> ProcessRecord | None:
    """The process whose life tells whether a running or launched flow run still runs: its
    engine once that has recorded itself, else the supervisor b2cal's launcher started (read
    only where it counts)."""
    if state not in ("RUNNING", "PENDING"):
        return None
    launched = launched_process(flow_run_id)
    engine = recorded_process(area, flow_run_id) if state == "RUNNING" else None
    if engine is None or (launched is not None and _older(engine, launched)):
        return launched  # no engine yet, or only an earlier attempt's
    return engine


def _older(one: ProcessRecord, other: ProcessRecord) -> bool:
    return one.recorded is not None and other.recorded is not None and one.recorded < other.recorded


def reconcile(site: Site, db: StateDatabase, *, now: datetime | None = None) -> list[Decision]:
    """One pass: every watched flow run of the site judged and healed, through one Prefect
    client (none when nothing is watched); returns what was done (NOTHING left out)."""
    first = watched_runs(db, site.name)
    if not first:
        return []
    done = []

    def area(watched: Watched) -> RequestArea:
        return RequestArea(site.request_folder(watched.request_id))

    with prefect_client() as client:
        views = flow_run_views(client, [w.flow_run_id for w in first])
        for watched in watched_runs(db, site.name):  # again: after Prefect's word
            view = views.get(watched.flow_run_id)
            state = view.state if view is not None else None
            decision = decide(
                watched,
                view,
                # read only where they count: a crash's retries, a running run's process
                retries_made=retries_made(db, watched.request_id, watched.flow_run_id)
                if state == "CRASHED"
                else 0,
                crash_retries=site.crash_retries,
                backoff_seconds=site.crash_backoff_seconds,
                now=now or datetime.now(UTC),
                process=process_of(area(watched), watched.flow_run_id, state),
                host=socket.gethostname(),
            )
            if decision.verdict is not Verdict.NOTHING and act(site, db, client, decision):
                done.append(decision)
    return done


def serve(site: Site, period: float, stop: threading.Event) -> None:
    """Reconcile every ``period`` seconds until ``stop`` is set, and keep the site's
    discovery going while it is on (:mod:`b2cal.orchestrator.discovery_runs`); the state
    database stays
    open between passes (opened again after a pass that failed), and a pass that fails is said
    in one line and the next one tries again."""
    log.info("reconciling site %s every %g s", site.name, period)
    db: StateDatabase | None = None
    try:
        while not stop.is_set():
            try:
                db = db or StateDatabase(site.state_database_url)
                for decision in reconcile(site, db):
                    log.info("%s: %s", decision.verdict.value, decision.line)
                started = discovery_runs.keep_going(site)  # the first, or after a crash
                if started:
                    log.info("discovery run %s started", started)
            except Exception as exc:  # the next pass tries again, on a new connection
                log.warning("reconciliation failed: %s: %s", type(exc).__name__, exc)
                if db is not None:
                    db.close()
                db = None
            stop.wait(period)
    finally:
        if db is not None:
            db.close()
    log.info("reconciler of site %s stopped", site.name)
