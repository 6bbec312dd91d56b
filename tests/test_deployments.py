"""``prefect.yaml`` against the site files: every site (deployments/sites/*.toml) has a
deployment of every flow on its own work pool, passing its name, tagged with it — and no
deployment names a site that has no file. One source of truth for the list of sites: the
files; this test keeps the project file in step with them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from b2cal.sites import load_site, site_names

pytestmark = pytest.mark.unit
PROJECT = Path(__file__).resolve().parents[1] / "prefect.yaml"


def _project() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(PROJECT.read_text())
    return loaded


def test_every_site_has_every_flow_deployed_on_its_own_pool() -> None:
    project = _project()
    flows = {entry["entrypoint"] for entry in project["definitions"]["flows"].values()}
    deployed: dict[tuple[str, str], dict[str, Any]] = {}
    for deployment in project["deployments"]:
        key = (deployment["entrypoint"], deployment["name"])
        assert key not in deployed, f"{key} deployed twice"
        deployed[key] = deployment
    sites = site_names()
    assert sites, "no site files"
    for name in sites:
        site = load_site(name)
        for entrypoint in sorted(flows):
            deployment = deployed.get((entrypoint, name))
            assert deployment is not None, f"site {name} has no deployment of {entrypoint}"
            assert deployment["work_pool"]["name"] == site.work_pool, (name, entrypoint)
            assert deployment["parameters"] == {"site": name}, (name, entrypoint)
            assert f"site:{name}" in deployment["tags"], (name, entrypoint)
            for schedule in deployment.get("schedules") or []:
                assert schedule.get("active") is False, (name, entrypoint, "on by default")
            if entrypoint.startswith("flows/discover.py"):  # kept going, not scheduled
                assert not deployment.get("schedules") and "paused" not in deployment
    strays = sorted({name for _, name in deployed} - set(sites))
    assert not strays, f"deployments of sites without a site file: {strays}"
