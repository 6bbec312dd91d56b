"""What every page works with: the served site, its state database, the gate, and the person
of the current session (from the request that opened it, judged again at each action)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import panel as pn
from bokeh.server.callbacks import PeriodicCallback
from tornado.ioloop import IOLoop

from b2cal.auth.policy import Action
from b2cal.db.database import StateDatabase
from b2cal.gateway.actions import Person, permit, person
from b2cal.settings import Settings
from b2cal.sites import Site
from dashboard.auth import Gate

T = TypeVar("T")
log = logging.getLogger("b2cal.dashboard")
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
    # keeps in the session token (which a client could have written, and which carries no
    # identity header: the server keeps them out of it).
    real = getattr(proxy, "_request", None)
    headers = real.headers if real is not None else {}
    identity = current.gate.identity(headers)
    return person(current.db, identity, current.settings)


def viewer() -> Person:
    """The person of the session, once the policy lets them see the site (NotAllowed, logged,
    otherwise: a certificate nginx accepts is not yet a role)."""
    current = app()
    who_ = who()
    permit(current.db, who_, Action.VIEW, f"the dashboard of site {current.site.name}")
    return who_


def now(who_: Person) -> Person:
    """The same person as they are now: a page may have been open for hours. Their
    certificate is judged again (revoked since, expired: NotAuthenticated, and the page
    ends the session), and their grants read again (a grant taken away, or a member the VO
    no longer lists, counts at the next click)."""
    current = app()
    return person(current.db, current.gate.again(who_.identity), current.settings)


def still(who_: Person) -> None:
    """NotAuthenticated if the person's certificate no longer proves them (a live page
    checks at each refresh, as an action does)."""
    app().gate.again(who_.identity)


def end_session(why: str) -> None:
    """End the current session, whose person is no longer valid: stop its periodic
    callbacks and close its websockets once the page has been sent ``why`` (Bokeh has no
    public call for closing a session from the server, hence its private attributes)."""
    doc = pn.state.curdoc
    if doc is None:
        return
    log.warning("ended a session of the dashboard: %s", why)
    for callback in list(doc.session_callbacks):
        if isinstance(callback, PeriodicCallback):
            doc.remove_periodic_callback(callback)
    session = getattr(doc.session_context, "_session", None)
    connections = list(getattr(session, "_subscribed_connections", ()))

    def close() -> None:
        for connection in connections:
            socket = getattr(connection, "_socket", None)
            if socket is not None:
                socket.close()

    IOLoop.current().call_later(1.0, close)  # the refusal reaches the page first


def argument(name: str) -> str | None:
    raw = pn.state.session_args.get(name) if pn.state.session_args else None
    return raw[0].decode() if raw else None
