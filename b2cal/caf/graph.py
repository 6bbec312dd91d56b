"""The dependency graph of calibrations: closure over ``depends_on``, cycles, order.

Calibrations form a DAG through ``depends_on`` (ChannelGain needs ChannelT0's payloads). This
module is pure: it works on declarations, so it is used the same way by ``b2cal caf run`` and by
the Prefect flows that run calibrations at a site.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from b2cal.caf.calibration import Calibration
from b2cal.errors import B2CalError


def with_dependencies(
    names: Iterable[str], load: Callable[[str], Calibration]
) -> tuple[dict[str, Calibration], list[str]]:
    """The requested calibrations plus everything they depend on, transitively.

    Returns the calibrations by name and the names that were added as dependencies (so the
    caller can say so). Raises on a dependency cycle, naming it.
    """
    requested = list(dict.fromkeys(names))
    found: dict[str, Calibration] = {}
    todo = list(requested)
    while todo:
        name = todo.pop(0)
        if name in found:
            continue
        found[name] = load(name)
        todo.extend(found[name].depends_on)
    topological_order(found)
    added = [name for name in found if name not in requested]
    return found, added


def topological_order(calibrations: Mapping[str, Calibration]) -> list[str]:
    """Names in an order where every calibration comes after its dependencies.

    Ties are broken by name, so the order is stable. Raises B2CalError on a cycle or on a
    dependency that is not among ``calibrations``.
    """
    for calibration in calibrations.values():
        for dep in calibration.depends_on:
            if dep not in calibrations:
                raise B2CalError(f"{calibration.name} depends on {dep!r}, which is not given")
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            cycle = [*path[path.index(name) :], name]
            raise B2CalError(f"dependency cycle: {' -> '.join(cycle)}")
        state[name] = "visiting"
        for dep in sorted(calibrations[name].depends_on):
            visit(dep, [*path, name])
        state[name] = "done"
        order.append(name)

    for name in sorted(calibrations):
        visit(name, [])
    return order


def upstream(name: str, calibrations: Mapping[str, Calibration]) -> list[str]:
    """Every calibration ``name`` depends on, nearest first (breadth-first, no repeats).

    This is the order in which dependencies' outputs enter the database chain.
    """
    seen: list[str] = []
    frontier = list(calibrations[name].depends_on)
    while frontier:
        dep = frontier.pop(0)
        if dep not in seen:
            seen.append(dep)
            frontier.extend(calibrations[dep].depends_on)
    return seen
