"""Talking to one schedd: found by name through its pool's collector (an unknown name is an
error, never the local schedd instead), one call at a time (the bindings' ``Schedd`` is shared
by every thread of the driver), and opened again after a call that failed (a schedd restarted,
a connection timed out)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from b2cal.errors import B2CalError

log = logging.getLogger("b2cal.backends")

#: ``connect(name, pool)``: the schedd's own name and a ``Schedd`` (or a stand-in) to call.
Connector = Callable[[str | None, str | None], tuple[str, Any]]
T = TypeVar("T")


class ScheddUnreachable(Exception):
    """The schedd did not answer (or the answer could not be had): worth asking again."""


def locate_schedd(name: str | None, pool: str | None) -> tuple[str, Any]:
    """The schedd ``name`` of ``pool`` (None: the access point's own, of the local pool)."""
    import htcondor2

    where = f"pool {pool}" if pool else "the local pool"
    try:
        collector = htcondor2.Collector(pool) if pool else htcondor2.Collector()
        ad = collector.locate(htcondor2.DaemonType.Schedd, name)
        if ad is None:  # Schedd(None) would be the local schedd: the wrong one, silently
            raise B2CalError(
                f"no HTCondor schedd named {name!r} in {where} (condor_status -schedd lists them)"
                if name
                else f"no HTCondor schedd on this machine in {where}: name one in the site file"
            )
        return str(ad.get("Name") or name or "local"), htcondor2.Schedd(ad)
    except (htcondor2.HTCondorException, OSError, ValueError) as exc:
        shown = name or "the local schedd"
        raise B2CalError(f"HTCondor schedd cannot be reached ({shown}, {where}): {exc}") from None


class ScheddLink:
    """One schedd, opened on first use (see the module docstring)."""

    def __init__(self, name: str | None, pool: str | None, connect: Connector) -> None:
        self.asked = name
        self.pool = pool
        self._connect = connect
        self._name: str | None = name
        self._schedd: Any = None
        self._opened_before = False
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        """The schedd's own name (opening it if that is not known yet)."""
        if self._name is None:
            with self._lock:
                self._open()
        assert self._name is not None
        return self._name

    def call(self, what: str, action: Callable[[Any], T]) -> T:
        """``action(schedd)``, alone; ScheddUnreachable if it failed (opened again next time).
        A schedd that cannot be located at all is a B2CalError (a site setting to fix)."""
        import htcondor2

        with self._lock:
            try:
                schedd = self._open()
            except B2CalError as exc:
                if not self._opened_before:
                    raise
                raise ScheddUnreachable(str(exc)) from None  # it answered before: for a while
            try:
                return action(schedd)
            except (htcondor2.HTCondorException, OSError, TimeoutError) as exc:
                self._schedd = None
                raise ScheddUnreachable(f"{what} on schedd {self._name}: {exc}") from None

    def _open(self) -> Any:
        if self._schedd is None:
            self._name, self._schedd = self._connect(self.asked, self.pool)
            self._opened_before = True
        return self._schedd


def owned_by(owner: str | None, clusters: Sequence[int]) -> str:
    """The constraint of ``owner``'s jobs in ``clusters`` (None: anyone's)."""
    listed = ", ".join(str(c) for c in sorted(set(clusters)))
    return _of(owner, f"member(ClusterId, {{{listed}}})")


def in_folders(owner: str | None, folders: Sequence[str]) -> str:
    """The constraint of ``owner``'s jobs tagged with one of ``folders`` (None: anyone's)."""
    listed = ", ".join(_string(f) for f in folders)
    return _of(owner, f"identicalMember(B2CalJobDir, {{{listed}}})")


def _of(owner: str | None, constraint: str) -> str:
    return constraint if owner is None else f"{constraint} && Owner == {_string(owner)}"


def checked(result: Any, what: str) -> None:
    """An ``act()`` answer: B2CalError if the schedd refused some of the jobs (jobs that had
    left the queue already are fine)."""
    if result is None:
        raise B2CalError(f"HTCondor gave no answer to {what}")
    refused = int(result.get("TotalPermissionDenied", 0) or 0)
    failed = int(result.get("TotalError", 0) or 0)
    if refused or failed:
        raise B2CalError(
            f"HTCondor refused {what} of {refused + failed} jobs "
            f"({refused} not permitted, {failed} errors)"
        )


def _string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
