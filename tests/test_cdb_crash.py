"""`b2cal cdb upload` killed with SIGKILL mid-upload, then run again (embedded store).

The upload is one transaction: whatever moment the kill lands, the staging tag holds either
none or all of the output's IoVs, and the retry completes it with one revision per payload.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from cli import B2CAL, b2cal, environment
from conftest import on_databases
from sql_databases import database_url

from b2cal.core.iov import IoV
from b2cal.core.localdb import write_local_database

PAYLOADS = 1500


def big_output(directory: Path) -> Path:
    """An output database with many small payloads, so the upload takes a while."""
    payloads = [
        ("Big", IoV(1, run, 1, run), {"run": run, "x": [run] * 50}) for run in range(PAYLOADS)
    ]
    write_local_database(directory, payloads)
    return directory


@pytest.mark.parametrize("kind", on_databases(["sqlite", "postgresql"]))
def test_killed_upload_leaves_all_or_nothing_and_the_retry_completes(
    kind: str, tmp_path: Path
) -> None:
    outputdb = big_output(tmp_path / "outputdb")
    home = tmp_path / "home"
    payload_files = home / "payloads"
    env = {"B2CAL_HOME": str(home), "B2CAL_CDB_PAYLOADS": str(payload_files)}
    with database_url(kind, tmp_path) as url:
        assert b2cal("cdb", "--db", url, "create", "staging", env=env).returncode == 0
        command = [str(B2CAL), "cdb", "--db", url, "upload", str(outputdb), "--tag", "staging"]
        process = subprocess.Popen(
            command, env=environment(False, env), start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            if payload_files.exists() and any(payload_files.rglob("*")):
                break  # payload files are being written: the transaction is under way
            time.sleep(0.01)
        killed_mid_way = process.poll() is None
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        assert killed_mid_way, "the upload finished before it could be killed"

        shown = b2cal("cdb", "--db", url, "show", "staging", "--json", env=env)
        assert shown.returncode == 0, shown.stderr
        assert len(json.loads(shown.stdout)["iovs"]) in (0, PAYLOADS)

        retry = b2cal("cdb", "--db", url, "upload", str(outputdb), "--tag", "staging", env=env)
        assert retry.returncode == 0, retry.stderr
        iovs = json.loads(b2cal("cdb", "--db", url, "show", "staging", "--json", env=env).stdout)
        assert len(iovs["iovs"]) == PAYLOADS
        assert sorted(i["revision"] for i in iovs["iovs"]) == list(range(1, PAYLOADS + 1))
