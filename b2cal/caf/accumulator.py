"""Mergeable collector outputs (accumulators), after coffea's accumulator idea.

A collector returns, for each run, an :class:`Accumulator`: a named bag of values whose merge is
``+``. Histograms (``hist.Hist``) add bin by bin, numbers add, and :class:`Column` concatenates
per-entry values. Merging always happens in a fixed order (by job, then by file), so the same
inputs give bit-identical sums and therefore bit-identical payloads.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from b2cal.core.iov import ExpRun


class Column:
    """Per-entry values (e.g. vertex positions) whose merge is concatenation, in order."""

    __slots__ = ("values",)

    def __init__(self, values: npt.ArrayLike) -> None:
        self.values: npt.NDArray[Any] = np.ascontiguousarray(values)

    def __add__(self, other: Column) -> Column:
        if not isinstance(other, Column):
            return NotImplemented
        return Column(np.concatenate([self.values, other.values]))

    def __len__(self) -> int:
        return len(self.values)

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

    def __repr__(self) -> str:
        return f"Accumulator({', '.join(self._items)})"


#: Collector output of one job: an accumulator per run.
RunAccumulators = dict[ExpRun, Accumulator]


def merge_runs(parts: Iterable[Mapping[ExpRun, Accumulator]]) -> RunAccumulators:
    """Merge per-run accumulators of several jobs, in the order given (keep it fixed)."""
    merged: RunAccumulators = {}
    for part in parts:
        for run in sorted(part):
            merged[run] = merged[run] + part[run] if run in merged else part[run]
    return dict(sorted(merged.items()))


def sum_runs(per_run: Mapping[ExpRun, Accumulator], runs: Iterable[ExpRun]) -> Accumulator:
    """The merged accumulator of a group of runs, summed in run order (deterministic)."""
    total = Accumulator()
    for run in sorted(runs):
        if run in per_run:
            total = total + per_run[run]
    return total
