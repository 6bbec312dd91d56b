"""Locks on a calibration: one holder at a time, across processes and threads.

The lock is an advisory ``flock`` on a file of the calibration's folder, which the system
releases however the holding process ends, so a killed driver never leaves a calibration locked.
A lock belongs to the thread that took it: that thread may take it again (a driver holds it
around the steps it calls, and each step takes it too); any other thread, of this process or
another, waits a moment, then is refused. A driver whose steps run in several threads (a
Prefect flow and its tasks) holds its locks under :func:`one_holder`: the threads started with
a copy of its context are then the same holder.
"""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import itertools
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

#: How long a driver waits for a lock before saying it is busy (``caf status`` probing a lock
#: holds it for an instant).
PATIENCE_SECONDS = 1.0


@dataclass
class _Held:
    handle: IO[str]
    owner: object  # the thread (or the holder of one_holder) that holds it
    count: int


_mutex = threading.Lock()
_held: dict[Path, _Held] = {}
_holder: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "b2cal_lock_holder", default=None
)
_holders = itertools.count(1)


@contextlib.contextmanager
def one_holder() -> Iterator[None]:
    """Inside, this thread and every thread started with a copy of its context (as Prefect's
    task runners start tasks) hold locks as one holder: a flow's tasks may take the locks the
    flow holds, while other processes and threads are still refused."""
    token = _holder.set(f"holder-{next(_holders)}")
    try:
        yield
    finally:
        _holder.reset(token)


def _me() -> object:
    return _holder.get() or threading.get_ident()


@contextlib.contextmanager
def hold(path: Path, busy: Exception) -> Iterator[None]:
    """Hold the lock ``path`` while inside; raise ``busy`` if someone else holds it."""
    me = _me()
    with _mutex:
        held = _held.get(path)
        if held is not None and held.owner == me:
            held.count += 1
    if held is None or held.owner != me:
        handle = _take(path, busy)  # outside the mutex: it may wait
        with _mutex:
            _held[path] = _Held(handle, me, 1)
    try:
        yield
    finally:
        with _mutex:
            held = _held[path]
            held.count -= 1
            if held.count == 0:
                del _held[path]
                fcntl.flock(held.handle, fcntl.LOCK_UN)
                held.handle.close()


def _take(path: Path, busy: Exception) -> IO[str]:
    """The system lock on ``path``; another open file of it, even in this process, holds it
    exclusively, so a second thread or process waits, then is refused."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a+")
    deadline = time.monotonic() + PATIENCE_SECONDS
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            if time.monotonic() >= deadline:
                handle.close()
                raise busy from None
            time.sleep(0.05)


def is_held(path: Path) -> bool:
    """Whether some thread of this process, or some other process, holds the lock now."""
    with _mutex:
        if path in _held:
            return True
    if not path.exists():
        return False
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False
