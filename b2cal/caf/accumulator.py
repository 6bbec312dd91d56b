"""Mergeable collector outputs (accumulators), after coffea's accumulator idea.

A collector returns, for each run, an :class:`Accumulator`: a named bag of values whose merge is
``+``. Histograms (``hist.Hist``) add bin by bin, numbers add, and :class:`Column` concatenates
per-entry values. Merging always happens in a fixed order (by job, then by file), so the same
inputs give bit-identical sums and therefore bit-identical payloads.

The engine merges in place (``total += part`` into a :meth:`Accumulator.copy`): histograms add
into the existing bins and columns only collect their parts, concatenated once when read, so
merging many files costs no new histogram per file and no quadratic copying of columns. The
values are the same, bit for bit, as those of ``+``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from b2cal.core.iov import ExpRun


class Column:
    """Per-entry values (e.g. vertex positions) whose merge is concatenation, in order."""

    __slots__ = ("_parts",)

    def __init__(self, values: npt.ArrayLike) -> None:
        self._parts: list[npt.NDArray[Any]] = [np.ascontiguousarray(values)]

    @property
    def values(self) -> npt.NDArray[Any]:
        """All values, in merge order (parts merged in place are concatenated now, once)."""
        if len(self._parts) != 1:
            self._parts = [np.concatenate(self._parts)]
        return self._parts[0]

    def __add__(self, other: Column) -> Column:
        if not isinstance(other, Column):
            return NotImplemented
        return Column(np.concatenate([self.values, other.values]))

    def __iadd__(self, other: Column) -> Column:
        if not isinstance(other, Column):
            return NotImplemented
        self._parts.extend(other._parts)
        return self

    def copy(self) -> Column:
        """A column that may be merged into without changing this one (arrays are shared)."""
        column = Column.__new__(Column)
        column._parts = list(self._parts)
        return column

    def __getstate__(self) -> npt.NDArray[Any]:
        return self.values

    def __setstate__(self, state: npt.NDArray[Any]) -> None:
        self._parts = [state]

    def __len__(self) -> int:
        return sum(len(part) for part in self._parts)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Column) and np.array_equal(self.values, other.values)

    def __repr__(self) -> str:
        return f"Column(n={len(self.values)}, dtype={self.values.dtype})"


class Accumulator(Mapping[str, Any]):
    """Named mergeable values; ``a + b`` merges value by value (keys missing on one side pass).

    Values must support ``+`` with values of the same key: ``hist.Hist``, ``int``/``float``,
    :class:`Column`, or another :class:`Accumulator`.
    """

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, Any] | None = None, /, **kwargs: Any) -> None:
        self._items: dict[str, Any] = dict(items or {})
        self._items.update(kwargs)

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __add__(self, other: Accumulator) -> Accumulator:
        if not isinstance(other, Accumulator):
            return NotImplemented
        merged = dict(self._items)
        for key, value in other._items.items():
            merged[key] = merged[key] + value if key in merged else value
        return Accumulator(merged)

    def __iadd__(self, other: Accumulator) -> Accumulator:
        """Merge ``other`` into this accumulator (``other`` is never changed).

        Only for an accumulator the caller owns (a :meth:`copy`): histograms and columns are
        changed in place.
        """
        if not isinstance(other, Accumulator):
            return NotImplemented
        for key, value in other._items.items():
            if key not in self._items:
                self._items[key] = _copy(value)
            elif _mutable(self._items[key]):
                self._items[key] += value
            else:  # numbers, and values that only know +
                self._items[key] = self._items[key] + value
        return self

    def copy(self) -> Accumulator:
        """A copy that may be merged into (``+=``) without changing this accumulator."""
        return Accumulator({key: _copy(value) for key, value in self._items.items()})

    def __repr__(self) -> str:
        return f"Accumulator({', '.join(self._items)})"


def _mutable(value: Any) -> bool:
    return isinstance(value, Column | Accumulator) or hasattr(value, "axes")


def _copy(value: Any) -> Any:
    """A value that may be merged into in place: histograms and columns copied, numbers kept."""
    if isinstance(value, Column | Accumulator):
        return value.copy()
    if hasattr(value, "axes") and hasattr(value, "copy"):  # hist / boost-histogram
        return value.copy()
    return value


#: Collector output of one job: an accumulator per run.
RunAccumulators = dict[ExpRun, Accumulator]


def merge_runs(parts: Iterable[Mapping[ExpRun, Accumulator]]) -> RunAccumulators:
    """Merge per-run accumulators of several jobs, in the order given (keep it fixed)."""
    merged: RunAccumulators = {}
    for part in parts:
        for run in sorted(part):
            if run in merged:
                merged[run] += part[run]
            else:
                merged[run] = part[run].copy()
    return dict(sorted(merged.items()))


def sum_runs(per_run: Mapping[ExpRun, Accumulator], runs: Iterable[ExpRun]) -> Accumulator:
    """The merged accumulator of a group of runs, summed in run order (deterministic)."""
    total = Accumulator()
    for run in sorted(runs):
        if run in per_run:
            total += per_run[run]
    return total
