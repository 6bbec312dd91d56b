"""Calibration plugins, found through the ``b2cal.calibrations`` entry-point group.

An experiment's package adds calibrations without touching b2cal by declaring, in its own
``pyproject.toml``::

    [project.entry-points."b2cal.calibrations"]
    MyCalibration = "mypackage.calibrations:my_calibration"

where ``my_calibration`` is a :class:`~b2cal.caf.calibration.Calibration` or a function
without arguments returning one. The entry-point name must equal the calibration's name.
"""

from __future__ import annotations

import functools
import sys
from importlib.metadata import EntryPoint, entry_points

from b2cal.caf.calibration import Calibration
from b2cal.errors import B2CalError

ENTRY_POINT_GROUP = "b2cal.calibrations"


def _entry_points() -> dict[str, EntryPoint]:
    """The registered calibrations, read once per import path: reading the installed
    packages' metadata costs ~30 ms, and a long-lived process (a flow run, the reconciler)
    asks for every request."""
    return _read_entry_points(tuple(sys.path))


@functools.lru_cache(maxsize=4)
def _read_entry_points(path: tuple[str, ...]) -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available() -> list[str]:
    """Names of every registered calibration, sorted."""
    return sorted(_entry_points())


def load(name: str) -> Calibration:
    """Load one registered calibration by name."""
    points = _entry_points()
    if name not in points:
        known = ", ".join(sorted(points)) or "none"
        raise B2CalError(f"unknown calibration {name!r} (registered: {known})")
    try:
        obj = points[name].load()
    except Exception as exc:  # a broken plugin must not take the others down silently
        raise B2CalError(f"calibration plugin {name!r} failed to load: {exc}") from exc
    calibration = obj() if callable(obj) and not isinstance(obj, Calibration) else obj
    if not isinstance(calibration, Calibration):
        raise B2CalError(f"calibration plugin {name!r} does not give a Calibration")
    if calibration.name != name:
        raise B2CalError(
            f"calibration plugin {name!r} declares the name {calibration.name!r}; they must match"
        )
    return calibration
