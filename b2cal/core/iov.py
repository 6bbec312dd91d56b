"""Experiment/run coordinates and intervals of validity (IoV), with Belle II conventions.

An IoV is closed at both ends. ``run_high = -1`` means "to the end of ``exp_high``" and
``exp_high = run_high = -1`` means open-ended. Keeping these conventions exactly (rather than
half-open intervals) is what lets b2cal's output databases be read by basf2 unchanged.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from b2cal.errors import B2CalError

#: The largest run number a run can have; stands in for "end of experiment" in comparisons.
END_OF_EXP = 2**31 - 1


class ExpRun(NamedTuple):
    """One run of one experiment. Tuple ordering is the time ordering."""

    exp: int
    run: int

    def __str__(self) -> str:
        return f"e{self.exp}r{self.run}"

    def previous(self) -> ExpRun:
        """The last run before this one: ``(exp, run-1)``, or ``(exp-1, -1)`` for run 0.

        ``run = -1`` is the "end of experiment" marker, as in an IoV's upper end.
        """
        if self.run > 0:
            return ExpRun(self.exp, self.run - 1)
        return ExpRun(self.exp - 1, -1)


@dataclass(frozen=True, order=True)
class IoV:
    """Interval of validity ``(exp_low, run_low, exp_high, run_high)``, both ends inclusive."""

    exp_low: int
    run_low: int
    exp_high: int
    run_high: int

    def __post_init__(self) -> None:
        if self.exp_low < 0 or self.run_low < 0:
            raise B2CalError(f"IoV {self}: the lower end must be a real run (exp, run >= 0)")
        if self.exp_high == -1 and self.run_high != -1:
            raise B2CalError(f"IoV {self}: exp_high = -1 needs run_high = -1 (open-ended)")
        if not self.is_open_ended and self._high_key() < (self.exp_low, self.run_low):
            raise B2CalError(f"IoV {self}: the upper end lies before the lower end")

    @classmethod
    def from_runs(cls, first: ExpRun, last: ExpRun) -> IoV:
        return cls(first.exp, first.run, last.exp, last.run)

    @classmethod
    def parse(cls, text: str) -> IoV:
        """Parse ``"e,r,e,r"`` (the form used in ``database.txt``)."""
        parts = text.strip().split(",")
        if len(parts) != 4 or not all(re.fullmatch(r"-?\d+", p.strip()) for p in parts):
            raise B2CalError(f"not an IoV: {text!r} (expected expLow,runLow,expHigh,runHigh)")
        a, b, c, d = (int(p) for p in parts)
        return cls(a, b, c, d)

    @property
    def first(self) -> ExpRun:
        return ExpRun(self.exp_low, self.run_low)

    @property
    def is_open_ended(self) -> bool:
        return self.exp_high == -1 and self.run_high == -1

    def _high_key(self) -> tuple[int, int]:
        """The upper end as a comparable (exp, run); open ends become +infinity."""
        if self.is_open_ended:
            return (END_OF_EXP, END_OF_EXP)
        if self.run_high == -1:
            return (self.exp_high, END_OF_EXP)
        return (self.exp_high, self.run_high)

    def contains(self, point: ExpRun) -> bool:
        return (self.exp_low, self.run_low) <= tuple(point) <= self._high_key()

    def overlaps(self, other: IoV) -> bool:
        return (self.exp_low, self.run_low) <= other._high_key() and (
            other.exp_low,
            other.run_low,
        ) <= self._high_key()

    def open_ended(self) -> IoV:
        """The same IoV with its upper end removed (valid until further notice)."""
        return IoV(self.exp_low, self.run_low, -1, -1)

    def __str__(self) -> str:
        return f"{self.exp_low},{self.run_low},{self.exp_high},{self.run_high}"


def tile_iovs(starts: list[ExpRun], last: ExpRun, open_ended: bool = False) -> list[IoV]:
    """IoVs that start at each of ``starts`` (ascending) and tile up to ``last`` with no gap.

    Each IoV ends just before the next one starts; the final one ends at ``last`` or, with
    ``open_ended``, has no end. This is the one place where b2cal turns groups of runs into
    payload IoVs, so every strategy tiles the requested range the same way.
    """
    if not starts:
        return []
    if any(b <= a for a, b in itertools.pairwise(starts)):
        raise B2CalError(f"IoV starts are not strictly increasing: {starts}")
    if last < starts[-1]:
        raise B2CalError(f"the last run {last} lies before the last IoV start {starts[-1]}")
    iovs = [IoV.from_runs(start, nxt.previous()) for start, nxt in itertools.pairwise(starts)]
    final = IoV.from_runs(starts[-1], last)
    iovs.append(final.open_ended() if open_ended else final)
    return iovs


def run_ranges(runs: Iterable[int]) -> str:
    """Run numbers as compact ranges, e.g. ``3-5, 9``."""
    groups: list[list[int]] = []
    for run in sorted(set(runs)):
        if groups and groups[-1][-1] == run - 1:
            groups[-1].append(run)
        else:
            groups.append([run])
    return ", ".join(f"{g[0]}-{g[-1]}" if len(g) > 1 else str(g[0]) for g in groups)


def parse_runs(text: str) -> tuple[int, int]:
    """A run range as people write it, ``"A-B"`` (inclusive) or ``"A"`` -> (first, last)."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", text)
    if match is None:
        raise B2CalError(f"invalid run range {text!r}: expected A-B or A (run numbers >= 0)")
    first = int(match[1])
    last = int(match[2]) if match[2] is not None else first
    if last < first:
        raise B2CalError(f"invalid run range {text!r}: it ends before it starts")
    return first, last
