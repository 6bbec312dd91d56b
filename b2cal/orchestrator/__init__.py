"""b2cal's side of Prefect, the orchestrator: its API client, the deployments, pools, limits and
automations it registers, the tags and titles of flow runs, and the local stack."""
