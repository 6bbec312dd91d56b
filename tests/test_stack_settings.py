"""What ``b2cal server up`` gives the Prefect server it starts, without starting one: the
database (``--prefect-database``, else ``B2CAL_PREFECT_DATABASE_URL``, else SQLite), and the
settings that keep its writes few (docs/orchestration.md, "SQLite or PostgreSQL")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cli import assert_one_line_error, b2cal_inline

from b2cal.orchestrator.stack import LocalStack, StackOptions, server_environment

pytestmark = pytest.mark.unit

POSTGRES = "postgresql+asyncpg://b2cal:secret@db.example:5432/prefect"
DATABASE = "PREFECT_SERVER_DATABASE_CONNECTION_URL"


@pytest.fixture
def up_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[StackOptions]:
    """The options ``server up`` hands to the stack (which starts nothing here)."""
    monkeypatch.setenv("B2CAL_HOME", str(tmp_path))
    monkeypatch.delenv("B2CAL_PREFECT_DATABASE_URL", raising=False)
    asked: list[StackOptions] = []

    def up(self: LocalStack, options: StackOptions, say: Any = None) -> dict[str, Any]:
        asked.append(options)
        return {"ui_url": "http://127.0.0.1:1", "api_url": "http://127.0.0.1:1/api"}

    monkeypatch.setattr(LocalStack, "up", up)
    monkeypatch.setattr("b2cal.orchestrator.profile.export_line", lambda *_: "export …")
    return asked


def test_the_option_names_the_prefect_servers_database(
    up_options: list[StackOptions], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    done = b2cal_inline("server", "up", "--no-discover", "--prefect-database", POSTGRES)
    assert done.returncode == 0, done.stdout + done.stderr
    (options,) = up_options
    assert server_environment(options, tmp_path)[DATABASE] == POSTGRES
    # the option wins over the environment variable, which still works on its own
    monkeypatch.setenv("B2CAL_PREFECT_DATABASE_URL", POSTGRES.replace("5432", "6543"))
    assert server_environment(options, tmp_path)[DATABASE] == POSTGRES
    assert server_environment(StackOptions(), tmp_path)[DATABASE].endswith(":6543/prefect")


def test_without_either_the_server_runs_on_sqlite_in_its_home(
    up_options: list[StackOptions], tmp_path: Path
) -> None:
    done = b2cal_inline("server", "up", "--no-discover", "--port", "4321")
    assert done.returncode == 0, done.stdout + done.stderr
    (options,) = up_options
    env = server_environment(options, tmp_path / "prefect", auth_string="u:p")
    assert env[DATABASE] == f"sqlite+aiosqlite:///{tmp_path / 'prefect' / 'prefect.db'}"
    assert env["PREFECT_SERVER_API_PORT"] == "4321"
    assert env["PREFECT_SERVER_API_AUTH_STRING"] == "u:p"
    # task-run events written in batches, within a second
    assert int(env["PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE"]) > 1
    assert env["PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL"] == "1"


def test_a_database_the_server_cannot_use_is_refused_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("B2CAL_PREFECT_DATABASE_URL", raising=False)
    done = b2cal_inline(
        "server", "up", "--prefect-database", "mysql://b2cal@db/prefect",
        env={"B2CAL_HOME": str(tmp_path)},
    )  # fmt: skip
    assert_one_line_error(done, "postgresql+asyncpg://", "not mysql://")
    assert not (tmp_path / "server" / "stack.json").exists()
