"""Backends by name: the ``b2cal.backends`` entry-point group, as calibrations are found in
``b2cal.calibrations``. b2cal registers ``local`` and ``slurm``; a site adds its own by
registering a function that takes the site's :class:`~b2cal.sites.BackendSettings` and returns
a :class:`~b2cal.backends.base.Backend` (``mysite = "mypackage.batch:open_backend"``)."""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points

from b2cal.backends.base import Backend
from b2cal.errors import B2CalError
from b2cal.sites import BackendSettings

ENTRY_POINT_GROUP = "b2cal.backends"


def available() -> list[str]:
    """The names of the registered backends."""
    return sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))


def open_backend(settings: BackendSettings) -> Backend:
    """The backend ``settings.name``, opened with the site's settings (B2CalError if none is
    registered under that name, or it cannot be opened here)."""
    found = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    if settings.name not in found:
        raise B2CalError(
            f"no backend {settings.name!r} (registered: {', '.join(sorted(found)) or 'none'})"
        )
    factory: Callable[[BackendSettings], Backend] = found[settings.name].load()
    backend = factory(settings)
    if not isinstance(backend, Backend):
        raise B2CalError(f"backend {settings.name!r} opened as {type(backend).__name__}")
    return backend
