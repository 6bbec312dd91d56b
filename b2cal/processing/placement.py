"""Where a request's calibrations run, and when each may start.

A calibration runs at its request's site unless the request places it at another one
(``Request.placement``). At the request's site, ``process-request`` runs *in process* every
calibration whose dependencies all run in that process too (or are skipped): each starts as
soon as its dependencies have written their ``outputdb``. Every other calibration is
*deferred*: it runs as a ``calibrate`` deployment run on its own site's pool once each of its
dependencies is UPLOADED or SKIPPED, and reads the payloads of dependencies computed at other
sites from the request's staging tag (exported into ``upstream/<Calibration>/`` of its
workspace). A deferred calibration whose dependency ended without payloads is not run.

These rules are pure: the flows, the command line and the dashboard ask the same questions.
"""

from __future__ import annotations

from collections.abc import Mapping

from b2cal.caf.calibration import Calibration
from b2cal.caf.graph import topological_order
from b2cal.db.model import CalibrationRun, Request
from b2cal.db.states import CalRunState

#: A dependency that ended in one of these leaves nothing for its dependants.
WITHOUT_PAYLOADS = (CalRunState.FAILED, CalRunState.NOT_ENOUGH_DATA, CalRunState.CANCELLED)


def _skipped(runs: Mapping[str, CalibrationRun]) -> set[str]:
    return {name for name, run in runs.items() if run.state is CalRunState.SKIPPED}


def computed_at(
    request: Request,
    calibrations: Mapping[str, Calibration],
    runs: Mapping[str, CalibrationRun],
    site: str,
) -> list[str]:
    """The calibrations the workspace of ``site`` computes, dependencies first."""
    skipped = _skipped(runs)
    return [
        name
        for name in topological_order(calibrations)
        if request.site_of(name) == site and name not in skipped
    ]


def in_process(
    request: Request,
    calibrations: Mapping[str, Calibration],
    runs: Mapping[str, CalibrationRun],
) -> list[str]:
    """The calibrations ``process-request`` runs itself, dependencies first: by how many
    dependencies deep they are (those that can start at once come first), then by name."""
    skipped = _skipped(runs)
    depth: dict[str, int] = {}
    for name in topological_order(calibrations):
        if name in skipped or request.site_of(name) != request.site:
            continue
        deps = [dep for dep in calibrations[name].depends_on if dep not in skipped]
        if all(dep in depth for dep in deps):
            depth[name] = 1 + max((depth[dep] for dep in deps), default=-1)
    return sorted(depth, key=lambda name: (depth[name], name))


def untaken(run: CalibrationRun) -> bool:
    """PLANNED, and no flow run has taken it (nor is being started for it)."""
    return run.state is CalRunState.PLANNED and run.started is None and run.flow_run_id is None


def deferred_now(
    request: Request,
    calibrations: Mapping[str, Calibration],
    runs: Mapping[str, CalibrationRun],
) -> tuple[list[CalibrationRun], dict[str, str]]:
    """The deferred calibration runs to start now (every dependency uploaded or skipped), and
    those that can never start (a dependency ended without payloads: name -> why)."""
    own = set(in_process(request, calibrations, runs))
    ready: list[CalibrationRun] = []
    hopeless: dict[str, str] = {}
    for name in topological_order(calibrations):
        run = runs.get(name)
        if run is None or name in own or not untaken(run):
            continue
        deps = [runs[dep] for dep in calibrations[name].depends_on if dep in runs]
        ended = [f"{dep.calibration} ended {dep.state.value}" for dep in deps
                 if dep.state in WITHOUT_PAYLOADS]  # fmt: skip
        if ended:
            hopeless[name] = "not run: " + "; ".join(ended)
        elif all(dep.state.done for dep in deps):
            ready.append(run)
    return ready, hopeless


def waits_for(
    calibrations: Mapping[str, Calibration], runs: Mapping[str, CalibrationRun], name: str
) -> list[str]:
    """The dependencies of ``name`` that are not uploaded or skipped yet."""
    return [
        dep for dep in calibrations[name].depends_on if dep in runs and not runs[dep].state.done
    ]
