"""Where the engine reports what it is doing: a rich display, plain lines, a flow's log, nothing.

The run log (``b2cal.log``) gets its lines through :mod:`logging` independently of this; a
progress display is only for whoever watches the run.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def stage(self, calibration: str, text: str) -> None:
        """``calibration`` entered a stage ("iteration 1: collecting (8 jobs)")."""

    def jobs(self, calibration: str, done: int, total: int) -> None:
        """``done`` of ``total`` collector jobs of ``calibration``'s current iteration ended."""


def plural(count: int, word: str, prefix: str = "") -> str:
    """``3 iterations``, ``1 iteration`` (with an optional prefix: ``at most 1 iteration``),
    for messages and log lines."""
    text = f"{count} {word}{'' if count == 1 else 's'}"
    return f"{prefix} {text}" if prefix else text


class NoProgress:
    def stage(self, calibration: str, text: str) -> None:
        pass

    def jobs(self, calibration: str, done: int, total: int) -> None:
        pass
