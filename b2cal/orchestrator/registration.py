"""What ``server up`` registers in Prefect besides the deployments: one process work pool per
site, a global concurrency limit per site with a job limit, the automation that marks runs
Crashed when their heartbeats stop, and notifications (a flow run failed; a calibration awaits
its sign-off) to a webhook."""

from __future__ import annotations

import contextlib
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

from b2cal.errors import B2CalError
from b2cal.orchestrator.client import prefect_client
from b2cal.orchestrator.launcher import job_template
from b2cal.sites import Site

CRASH_AUTOMATION = "b2cal: mark runs without heartbeat Crashed"
FAILED_AUTOMATION = "b2cal: notify flow run failed"
SIGNOFF_AUTOMATION = "b2cal: notify awaiting sign-off"
WEBHOOK_BLOCK = "b2cal-notify"
#: The event a calibration run emits when it starts to wait for a sign-off.
SIGNOFF_EVENT = "b2cal.signoff.waiting"


def deployed_pools(project: Path, sites: list[Site]) -> list[str]:
    """The work pools of the deployments ``project`` (a ``prefect.yaml``) makes for these sites
    (deployments are named after their site), in order; a site it makes none for is refused."""
    import yaml

    try:
        doc = yaml.safe_load(project.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise B2CalError(f"{project} cannot be read: {exc}") from None
    pools: dict[str, None] = {}
    for site in sites:
        found = [d for d in doc.get("deployments") or [] if d.get("name") == site.name]
        if not found:
            raise B2CalError(f"{project} has no deployments for site {site.name}")
        pools.update((d.get("work_pool", {}).get("name") or site.work_pool, None) for d in found)
    return list(pools)


def ensure_pools(pools: list[str], sites: list[Site]) -> None:
    """A process work pool of each name: every pool the deployments name must exist before
    they are deployed; a site's description labels its pool. Each starts its flow runs
    through b2cal's launcher (:mod:`launcher`): an existing pool's command is set to it unless
    someone set another (:func:`launching`); the rest of the pool is left as it is."""
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.process import ProcessWorker

    described = {site.work_pool: site.description or f"b2cal site {site.name}" for site in sites}
    template = job_template(ProcessWorker.get_default_base_job_template())
    with prefect_client() as client:
        for pool in dict.fromkeys([*pools, *described]):
            try:
                existing = client.read_work_pool(pool)
            except ObjectNotFound:
                existing = None
            if existing is not None:
                brought = launching(existing.base_job_template)
                if brought is not None and brought != existing.base_job_template:
                    client.update_work_pool(pool, WorkPoolUpdate(base_job_template=brought))
                continue
            with contextlib.suppress(ObjectAlreadyExists):  # another b2cal created it meanwhile
                client.create_work_pool(
                    WorkPoolCreate(
                        name=pool,
                        type="process",
                        base_job_template=template,
                        description=described.get(pool, f"b2cal work pool {pool}"),
                    )
                )


def launching(template: dict[str, Any]) -> dict[str, Any] | None:
    """An existing pool's template with b2cal's launcher as its command (the rest of it as it
    is), or None when someone set a command of their own there."""
    try:
        command = template["variables"]["properties"]["command"].get("default")
    except (KeyError, TypeError, AttributeError):
        return None  # not a process pool's template
    if command and "b2cal.orchestrator.launcher" not in command:
        return None
    return job_template(template)


def job_limit_name(site: Site) -> str:
    """The Prefect global concurrency limit that counts a site's collector jobs."""
    return f"site:{site.name}"


def ensure_job_limits(sites: list[Site]) -> None:
    """A global concurrency limit ``site:<name>`` for each site with a ``job_limit``: every
    flow run at the site takes a slot per collector job it has queued or running, so all of
    them together never pass it."""
    with prefect_client() as client:
        for site in sites:
            if site.backend.job_limit is not None:
                client.upsert_global_concurrency_limit_by_name(
                    job_limit_name(site), site.backend.job_limit
                )


def ensure_automations(heartbeat_timeout: int, notify_url: str | None) -> None:
    """(Re)create b2cal's automations: names are not unique in Prefect, so old ones go first."""
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import CallWebhook, ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    wanted = [
        Automation(
            name=CRASH_AUTOMATION,
            description="A flow run whose process and worker are both gone sends no heartbeat.",
            trigger=EventTrigger(
                after={"prefect.flow-run.heartbeat"},
                expect={
                    "prefect.flow-run.heartbeat",
                    "prefect.flow-run.Completed",
                    "prefect.flow-run.Failed",
                    "prefect.flow-run.Cancelled",
                    "prefect.flow-run.Crashed",
                },
                match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
                for_each={"prefect.resource.id"},
                posture=Posture.Proactive,
                threshold=1,
                within=timedelta(seconds=heartbeat_timeout),
            ),
            actions=[
                ChangeFlowRunState(
                    name="Crashed",
                    force=False,
                    state=StateType.CRASHED,
                    message=f"no heartbeat for {heartbeat_timeout} s: marked Crashed by b2cal",
                )
            ],
        )
    ]
    if notify_url:
        from prefect.blocks.webhook import Webhook

        block = Webhook(url=notify_url, method="POST")  # type: ignore[arg-type]
        saved = block.save(WEBHOOK_BLOCK, overwrite=True)
        assert isinstance(saved, UUID)
        block_id: UUID = saved
        wanted += [
            Automation(
                name=FAILED_AUTOMATION,
                trigger=EventTrigger(
                    expect={"prefect.flow-run.Failed"},
                    match=ResourceSpecification({"prefect.resource.id": "prefect.flow-run.*"}),
                    posture=Posture.Reactive,
                    threshold=1,
                ),
                actions=[
                    CallWebhook(
                        block_document_id=block_id,
                        payload='{"kind": "failed", "flow_run": "{{ flow_run.name }}", '
                        '"id": "{{ flow_run.id }}", "flow": "{{ flow.name }}", '
                        '"message": {{ flow_run.state.message | tojson }}}',
                    )
                ],
            ),
            Automation(
                name=SIGNOFF_AUTOMATION,
                trigger=EventTrigger(
                    expect={SIGNOFF_EVENT},
                    match=ResourceSpecification({"prefect.resource.id": "b2cal.calibration-run.*"}),
                    posture=Posture.Reactive,
                    threshold=1,
                ),
                actions=[
                    CallWebhook(
                        block_document_id=block_id,
                        payload='{"kind": "awaiting-signoff", '
                        '"calibration_run": "{{ event.resource.id }}", '
                        '"details": {{ event.payload | tojson }}}',
                    )
                ],
            ),
        ]
    with prefect_client() as client:
        for automation in wanted:
            for old in client.read_automations_by_name(automation.name):
                client.delete_automation(old.id)
    for automation in wanted:
        automation.create()


def activate_discovery(site: Site) -> None:
    """Turn on a site's discovery (``prefect.yaml`` deploys it paused) and start its first
    run now rather than at the reconciler's next pass (:mod:`discovery_runs`)."""
    from b2cal.orchestrator import discovery_runs

    discovery_runs.switch(site, on=True)
    discovery_runs.keep_going(site)
