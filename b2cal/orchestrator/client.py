"""Reaching the Prefect API: from ``PREFECT_API_URL`` if set, else from the local stack.

``b2cal server up`` records the API address (and auth string) of the server it started under
``B2CAL_HOME/server/``; b2cal's commands use it unless Prefect is configured otherwise
(``PREFECT_API_URL``, ``PREFECT_PROFILE``), so nothing else needs setting on a laptop.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from b2cal.errors import B2CalError, OrchestratorUnreachable
from b2cal.settings import Settings

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient

    from b2cal.sites import Site


def stack_folder(settings: Settings | None = None) -> Path:
    return (settings or Settings()).home / "server"


def stack_state(settings: Settings | None = None) -> dict[str, Any] | None:
    path = stack_folder(settings) / "stack.json"
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
        return doc
    except (OSError, ValueError):
        return None


def use_local_stack() -> None:
    """Point the Prefect client at the local stack unless Prefect is configured already."""
    if "PREFECT_API_URL" in os.environ or "PREFECT_PROFILE" in os.environ:
        return
    state = stack_state()
    if state is None:
        return
    os.environ["PREFECT_API_URL"] = state["api_url"]
    if state.get("auth_string"):
        os.environ.setdefault("PREFECT_API_AUTH_STRING", state["auth_string"])


def api_url() -> str:
    use_local_stack()
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise OrchestratorUnreachable(
            "(none)", "no Prefect API is configured and the local stack is not up"
        )
    return str(url)


def check_reachable(timeout: float = 5.0) -> str:
    """The API URL, once its health endpoint answers (OrchestratorUnreachable if not)."""
    url = api_url()
    try:
        response = httpx.get(f"{url.rstrip('/')}/health", timeout=timeout)
    except httpx.HTTPError as exc:
        raise OrchestratorUnreachable(url, str(exc) or type(exc).__name__) from None
    if response.status_code != 200:
        raise OrchestratorUnreachable(url, f"health check answered HTTP {response.status_code}")
    return url


@contextmanager
def prefect_client() -> Iterator[SyncPrefectClient]:
    """A synchronous Prefect client on the reachable API; HTTP errors become one line."""
    url = check_reachable()
    from prefect.client.orchestration import get_client
    from prefect.exceptions import PrefectHTTPStatusError

    try:
        with get_client(sync_client=True) as client:
            yield client
    except PrefectHTTPStatusError as exc:
        status = exc.response.status_code
        if status == 401:
            raise OrchestratorUnreachable(url, "unauthorised (PREFECT_API_AUTH_STRING?)") from None
        detail = exc.response.text.strip().splitlines()[0] if exc.response.text else ""
        raise B2CalError(f"Prefect API {url} refused the request: HTTP {status} {detail}") from None
    except httpx.HTTPError as exc:
        raise OrchestratorUnreachable(url, str(exc) or type(exc).__name__) from None


def deployment(flow: str, site: Site) -> str:
    """The name of a flow's deployment on a site's work pool (``prefect.yaml``)."""
    return f"{flow}/{site.name}"


def start_deployment_run(
    name: str, parameters: dict[str, Any], tags: list[str], *, run_name: str | None = None
) -> str:
    """Create a run of deployment ``name`` (its pool's worker starts it), named ``run_name``
    in the list from the start (not a random name until it runs); its flow-run id."""
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment

    with prefect_client():  # checks the API first, and turns its errors into one line
        flow_run = run_deployment(
            name, parameters=parameters, timeout=0, as_subflow=False, tags=tags,
            flow_run_name=run_name,
        )  # fmt: skip
    assert isinstance(flow_run, FlowRun)
    return str(flow_run.id)


def no_worker(site: Site) -> str | None:
    """What a run on the site's pool waits for, if no worker of the pool is online (it starts
    when one comes); None when one is."""
    from prefect.client.schemas.objects import WorkPoolStatus

    with prefect_client() as client:
        pool = client.read_work_pool(site.work_pool)
    if pool.status is WorkPoolStatus.READY:
        return None
    return f"waiting for a worker: work pool {site.work_pool} has none online"


def flow_runs_tagged(tags: list[str], limit: int = 200) -> list[dict[str, Any]]:
    """The flow runs carrying every one of ``tags``, newest first, in one call (the API pages
    at 200): what the dashboard's detail pages show beside b2cal's own records."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
    from prefect.client.schemas.sorting import FlowRunSort

    with prefect_client() as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=tags)),
            sort=FlowRunSort.START_TIME_DESC,
            limit=min(limit, 200),
        )
    return [
        {
            "id": str(run.id),
            "name": run.name,
            "state": run.state.name if run.state else "",
            "type": run.state.type.value if run.state else "",
            "start": run.start_time,
            "end": run.end_time,
            "seconds": run.total_run_time.total_seconds(),
        }
        for run in runs
    ]


def ui_url() -> str | None:
    """The Prefect UI beside the API (the local stack serves both), if one is configured."""
    try:
        return api_url().rstrip("/").removesuffix("/api")
    except OrchestratorUnreachable:
        return None


def flow_run_log_tail(flow_run_id: str, lines: int = 20) -> list[str]:
    """The last ``lines`` log lines of a flow run (its tasks' included), oldest first."""
    from uuid import UUID

    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    with prefect_client() as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[UUID(flow_run_id)])),
            limit=lines,
            sort=LogSort.TIMESTAMP_DESC,
        )
    return [f"{log.timestamp:%H:%M:%S} {log.message}" for log in reversed(logs)]


def flow_run_artifacts(flow_run_ids: list[str], limit: int = 200) -> list[dict[str, Any]]:
    """The artifacts the given flow runs made (the validation summary and constants table of a
    ``calibrate`` run), newest first, in one call: every version of a keyed artifact is its
    own record, tied to the run that made it."""
    from uuid import UUID

    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.client.schemas.sorting import ArtifactSort

    if not flow_run_ids:
        return []
    wanted = ArtifactFilterFlowRunId(any_=[UUID(i) for i in flow_run_ids])
    with prefect_client() as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=wanted),
            sort=ArtifactSort.CREATED_DESC,
            limit=min(limit, 200),
        )
    return [
        {
            "id": str(a.id),
            "key": a.key or "",
            "type": a.type or "",
            "description": a.description or "",
            "flow_run_id": str(a.flow_run_id) if a.flow_run_id else "",
            "created": a.created,
        }
        for a in artifacts
    ]
