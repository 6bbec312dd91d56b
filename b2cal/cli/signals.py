"""SIGTERM handled like Ctrl-C, remembering which of the two stopped the command.

Batch systems and ``kill`` send SIGTERM; raising it in the main thread as a KeyboardInterrupt
unwinds exactly as Ctrl-C does (running jobs cancelled, nothing new started). typer turns every
KeyboardInterrupt into exit status 130, so which signal it was is kept here.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread."""


_TERMINATED: list[bool] = []


def _terminate(signum: int, frame: object) -> None:
    _TERMINATED.append(True)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not break the clean-up
    raise Terminated()


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM raises :class:`Terminated` in the main thread."""
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def terminated() -> bool:
    """Whether SIGTERM (rather than Ctrl-C) interrupted the command."""
    return bool(_TERMINATED)


def interruption() -> str:
    """What stopped the command, as a user reads it."""
    return "terminated (SIGTERM)" if terminated() else "interrupted"
