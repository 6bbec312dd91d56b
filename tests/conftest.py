"""Shared fixtures, and the test tiers. Test data is made by the project's own toy generator,
never checked in.

Every test is in exactly one tier (a test in none, or in two, fails the collection):

* ``unit``: no service and no Prefect server — files, processes, the toy data, in-process
  fakes (``make check`` runs this tier);
* ``services``: real servers other than Prefect's — PostgreSQL, MariaDB, nginx, Slurm, the
  TLS API;
* ``stack``: a Prefect server (the local stack) or a real browser.

A module names its tier (``pytestmark``); the conditions-database and state-database
fixtures carry it per database (SQLite and the fake nopayloaddb are ``unit``, PostgreSQL and
MariaDB ``services``), so a module whose tests run on every database names none.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

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


#: Every conditions-database store the behavioural tests run against. The SQL ones are real
#: servers on loopback (tests/sql_databases.py creates and drops a database per test); the
#: nopayloaddb one is a fake of its REST API (tests/fake_nopayloaddb.py says why).
TIERS = ("unit", "services", "stack")
#: The tier of a test on each kind of database.
DATABASE_TIER = {"sqlite": "unit", "nopayloaddb": "unit", "postgresql": "services",
                 "mariadb": "services"}  # fmt: skip


def on_databases(kinds: list[str]) -> list[Any]:
    """Fixture or test parameters, one per database kind, each marked with its tier."""
    return [pytest.param(k, id=k, marks=getattr(pytest.mark, DATABASE_TIER[k])) for k in kinds]


SQL_STORES = on_databases(["sqlite", "postgresql", "mariadb"])
ALL_STORES = on_databases(["sqlite", "postgresql", "mariadb", "nopayloaddb"])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test in exactly one tier."""
    wrong = []
    for item in items:
        tiers = sorted({m.name for m in item.iter_markers() if m.name in TIERS})
        if len(tiers) != 1:
            wrong.append(f"{item.nodeid}: {', '.join(tiers) or 'no tier'}")
    if wrong:
        raise pytest.UsageError(
            "every test needs exactly one tier (unit, services, stack; tests/conftest.py):\n  "
            + "\n  ".join(wrong)
        )


def _open_store(kind: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    if kind == "nopayloaddb":
        from fake_nopayloaddb import rest_store

        return rest_store(tmp_path)
    from sql_databases import embedded_store

    return embedded_store(kind, tmp_path)


@pytest.fixture(params=ALL_STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A fresh, empty conditions database of every kind in turn."""
    with _open_store(request.param, tmp_path) as opened:
        yield opened


@pytest.fixture(params=SQL_STORES)
def sql_store(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A fresh embedded store on each SQL database (for what only the embedded store does)."""
    with _open_store(request.param, tmp_path) as opened:
        yield opened


@pytest.fixture(params=SQL_STORES)
def state_db(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A fresh, empty state database on each SQL database in turn."""
    from sql_databases import database_url

    from b2cal.db.database import StateDatabase

    with database_url(request.param, tmp_path) as url:
        db = StateDatabase(url)
        try:
            yield db
        finally:
            db.close()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The local stack every orchestration test shares (tests/prefect_stack.py)."""
    from prefect_stack import running_stack

    with running_stack(tmp_path_factory.mktemp("stack")) as started:
        yield started


@pytest.fixture(scope="session")
def prompt_request(stack):  # type: ignore[no-untyped-def]
    """The demo's prompt request run to its end once per session, for the tests that look at
    what it did and left (tests/test_orchestration.py, tests/test_prefect_ui_artifacts.py):
    it takes a minute, each test its own experiment otherwise."""
    from prefect_stack import run_prompt_request

    return run_prompt_request(stack)


@pytest.fixture
def in_stack(stack):  # type: ignore[no-untyped-def]
    """The stack's environment in the test's own process (its Prefect client, its databases)."""
    from prefect_stack import inside

    with inside(stack):
        yield stack


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A real Slurm on loopback for the session; SLURM_CONF set while it is up."""
    from slurm_cluster import slurm_cluster

    with slurm_cluster(tmp_path_factory.mktemp("slurm")) as conf:
        saved = os.environ.get("SLURM_CONF")
        os.environ["SLURM_CONF"] = str(conf)
        try:
            yield conf
        finally:
            if saved is None:
                os.environ.pop("SLURM_CONF", None)
            else:
                os.environ["SLURM_CONF"] = saved
