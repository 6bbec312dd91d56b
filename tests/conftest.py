"""Shared fixtures. Test data is made by the project's own toy generator, never checked in."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Keep BLAS single-threaded in tests: the machine has two cores and the worker pools use both.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def small_storage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four runs of toy data, run 3 with low statistics (shared, read-only)."""
    from b2cal.toy.generate import generate_toy

    storage = tmp_path_factory.mktemp("storage")
    generate_toy(storage, 1, [1, 2, 3, 4], files_per_run=2, events=600, seed=7, low_stat={3: 40})
    return storage
