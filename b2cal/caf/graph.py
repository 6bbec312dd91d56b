"""The dependency graph of calibrations: closure over ``depends_on``, cycles, order.

Calibrations form a DAG through ``depends_on`` (ChannelGain needs ChannelT0's payloads). This
module is pure: it works on declarations, so ``b2cal caf run`` and the Prefect flows order
calibrations the same way. The graph itself is the standard library's
:class:`graphlib.TopologicalSorter`; the driver uses it to start each calibration as soon as its
dependencies are done (:func:`sorter`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from graphlib import CycleError, TopologicalSorter

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


def sorter(calibrations: Mapping[str, Calibration]) -> TopologicalSorter[str]:
    """A prepared sorter of ``calibrations`` (B2CalError on a cycle or a missing dependency)."""
    for calibration in calibrations.values():
        for dep in calibration.depends_on:
            if dep not in calibrations:
                raise B2CalError(f"{calibration.name} depends on {dep!r}, which is not given")
    graph = TopologicalSorter(
        {name: calibrations[name].depends_on for name in sorted(calibrations)}
    )
    try:
        graph.prepare()
    except CycleError as exc:
        raise B2CalError(f"dependency cycle: {_cycle(exc.args[1])}") from None
    return graph


def _cycle(nodes: list[str]) -> str:
    """The cycle as "A -> B -> A" (A depends on B), starting at its first name."""
    ring = list(reversed(nodes))[:-1]  # graphlib lists predecessors first: read it backwards
    start = ring.index(min(ring))
    ring = ring[start:] + ring[:start]
    return " -> ".join([*ring, ring[0]])


def topological_order(calibrations: Mapping[str, Calibration]) -> list[str]:
    """Names in an order where every calibration comes after its dependencies; of those ready
    at the same time, the first by name comes first (the order is stable)."""
    graph = sorter(calibrations)
    order: list[str] = []
    ready: list[str] = []
    while graph.is_active():
        ready.extend(graph.get_ready())
        ready.sort()
        name = ready.pop(0)
        order.append(name)
        graph.done(name)
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
