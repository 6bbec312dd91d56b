"""The artifacts the flows leave in the Prefect UI: what :mod:`b2cal.orchestrator.artifacts`
builds, handed to Prefect in the run that made it (docs/orchestration.md, "Artifacts")."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE

from b2cal.orchestrator.artifacts import (
    MarkdownArtifact,
    TableArtifact,
    request_summary_of,
    validation_artifacts_of,
)
from b2cal.processing.validation import Validation
from b2cal.sites import Site
from flows.common import records


def publish(*artifacts: MarkdownArtifact | TableArtifact) -> None:
    """Create each artifact, tied to the flow or task run this is called in."""
    for made in artifacts:
        if isinstance(made, MarkdownArtifact):
            create_markdown_artifact(made.markdown, key=made.key, description=made.description)
        else:
            create_table_artifact(made.rows, key=made.key, description=made.description)


def publish_validation(site: Site, request_id: int, validation: Validation) -> None:
    """The validation report and the constants table of a calibration just validated."""
    with records(site) as (db, _):
        made = validation_artifacts_of(db, request_id, validation.calibration, validation)
    publish(*made)


@task(name="request summary", cache_policy=NONE, task_run_name="summary · request {request_id}")
def request_summary_task(site: Site, request_id: int) -> str:
    """The request's summary artifact (what ran, what passed, where the payloads went);
    returns its key."""
    with records(site) as (db, store):
        made = request_summary_of(db, store, request_id)
    publish(made)
    return made.key


def summarise_request(site: Site, request_id: int) -> None:
    """The summary, at the end of a ``process-request`` run. A report that cannot be made
    (the Prefect API away for a moment) is said in the log and fails nothing: the request's
    state is in b2cal's records either way."""
    try:
        request_summary_task(site, request_id)
    except Exception as exc:
        get_run_logger().warning("request %d: no summary artifact: %s", request_id, exc)
