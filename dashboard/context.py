"""What every page works with: the served site, its state database, the gate, and the person
of the current session (from the headers the gate accepted for it)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import panel as pn

from b2cal.auth.policy import Action
from b2cal.db.database import StateDatabase
from b2cal.orchestration.actions import Person, permit, person
from b2cal.settings import Settings
from b2cal.sites import Site
from dashboard.auth import Gate

T = TypeVar("T")
#: Seconds a view's data is reused across sessions (many people watching one overview cost
#: one query set per interval).
CACHE_SECONDS = 2.0


@dataclass
class Dashboard:
    site: Site
    db: StateDatabase
    gate: Gate
    settings: Settings
    _cache: dict[Any, tuple[float, Any]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def cached(self, key: Any, make: Callable[[], T], seconds: float = CACHE_SECONDS) -> T:
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and time.monotonic() - hit[0] < seconds:
                return hit[1]  # type: ignore[no-any-return]
        value = make()
        with self._lock:
            self._cache[key] = (time.monotonic(), value)
        return value

    def forget(self) -> None:
        """After an action: the next page shows what it changed."""
        with self._lock:
            self._cache.clear()


_APP: list[Dashboard] = []


def install(app: Dashboard) -> None:
    _APP[:] = [app]


def app() -> Dashboard:
    return _APP[0]


def who() -> Person:
    """The person of the current session (the gate let its requests through)."""
    current = app()
    proxy = pn.state.curdoc.session_context.request if pn.state.curdoc else None
    # The HTTP request that made the session, as Tornado received it: not the headers Bokeh
    # keeps in the session token, which a client could have written itself.
    real = getattr(proxy, "_request", None)
    headers = real.headers if real is not None else {}
    peer = getattr(real, "remote_ip", None) or "unknown"
    identity = current.gate.identity(headers, peer)
    return person(current.db, identity, current.settings)


def viewer() -> Person:
    """The person of the session, once the policy lets them see the site (NotAllowed, logged,
    otherwise: a certificate nginx accepts is not yet a role)."""
    current = app()
    who_ = who()
    permit(current.db, who_, Action.VIEW, f"the dashboard of site {current.site.name}")
    return who_


def now(who_: Person) -> Person:
    """The same person with their grants as they are now: a page may have been open for hours
    (a grant taken away, or a member the VO no longer lists, counts at the next click)."""
    current = app()
    return person(current.db, who_.identity, current.settings)


def argument(name: str) -> str | None:
    raw = pn.state.session_args.get(name) if pn.state.session_args else None
    return raw[0].decode() if raw else None
