"""Flow runs that outlive their worker: what a b2cal pool's worker runs to start a flow run.

Prefect 3.9.1's process worker starts each flow run as its own child, streams the run's output
through its pipes, and when it exits (SIGTERM from a service manager, an upgrade) it stops
every process it started; killed with SIGKILL, it takes its runs down with it the moment
they next write to the dead pipe. A worker's stop would stop a site's calibrations.

So b2cal's pools start a flow run through this launcher (their base job template's
``command``; :func:`job_template`). It starts ``prefect flow-run execute`` — Prefect's own
supervisor of one flow run, which watches for cancellation, runs the cancellation and crash
hooks and reports a crashed engine — in a session of its own, its output appended to a log
of its own, records where it runs, and exits at once. The
worker sees a launch that succeeded and forgets the run; the run goes on whatever happens to
the worker, and a restarted worker picks up only what is scheduled.

What it costs: the worker no longer sees the run's process exit. A crash of the engine is
still reported by its supervisor; the supervisor itself gone (``kill -9`` of the whole run, a
node lost), or a supervisor that died before its engine ran, is seen by the site's
reconciler — within a period on its own host (this record, and the engine's own in
:mod:`b2cal.requests.healing`), after the heartbeat timeout elsewhere. A service manager
must stop only the worker's own process (systemd: ``KillMode=process``): the default kills
every process of the unit's control group, the runs included. ``b2cal server down`` stops the
runs it finds recorded here (a stopped stack cannot hear from them).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from b2cal.core.processes import ProcessRecord
from b2cal.orchestrator.client import stack_folder

#: Set by the worker: the flow run to start.
FLOW_RUN_ENV = "PREFECT__FLOW_RUN_ID"
#: The worker's own cancellation channel: meaningless once the worker has forgotten the run
#: (the supervisor opens its own).
WORKER_CHANNEL_ENV = ("PREFECT__CONTROL_PORT", "PREFECT__CONTROL_TOKEN")


def command() -> list[str]:
    """The pool's command: this module, run by the interpreter b2cal is installed in."""
    return [sys.executable, "-m", "b2cal.orchestrator.launcher"]


def job_template(template: dict[str, Any]) -> dict[str, Any]:
    """A process pool's base job template with the launcher as its default command. Output
    streaming stays as it is: the worker streams the launcher's own lines (a launch that
    fails says why in the worker's log); the run's output goes to its own log, never
    through the worker's pipes."""
    from prefect.utilities.processutils import command_to_string

    changed: dict[str, Any] = json.loads(json.dumps(template))
    properties = changed["variables"]["properties"]
    properties["command"]["default"] = command_to_string(command())
    properties["command"]["description"] = (
        "b2cal's launcher: the flow run in a session of its own, so that it outlives the "
        "worker (b2cal docs/orchestration.md). Blank: Prefect's default, the run a child of "
        "the worker."
    )
    return changed


#: Logs of ended runs are kept this long (discovery alone starts a run every few minutes).
KEEP_LOGS_DAYS = 14
#: How often the logs are pruned (at a launch).
PRUNE_EVERY_SECONDS = 3600.0


def runs_folder() -> Path:
    """Where each detached flow run's record (``<id>.json``) and log (``<id>.log``) are."""
    return stack_folder() / "flow-runs"


def record_path(flow_run_id: str) -> Path:
    """Where the launcher records the supervisor of ``flow_run_id``."""
    return runs_folder() / f"{flow_run_id}.json"


def launch(flow_run_id: str, env: dict[str, str]) -> int:
    """Start the supervisor of ``flow_run_id`` detached; its PID.

    Once the supervisor runs, nothing here may fail the launch (the worker would mark a
    running run Crashed): the record and the pruning after it only log what goes wrong, and
    a SIGTERM meanwhile (the worker stopping) waits until the launcher is done.
    """
    folder = runs_folder()
    folder.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in env.items() if k not in WORKER_CHANNEL_ENV}
    log = folder / f"{flow_run_id}.log"
    stopped: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, _: stopped.append(signum))
    try:
        with log.open("ab") as out:
            now = time.strftime("%Y-%m-%d %H:%M:%S")
            out.write(f"--- {now} flow run {flow_run_id}\n".encode())
            out.flush()
            process = subprocess.Popen(
                [sys.executable, "-m", "prefect", "flow-run", "execute", flow_run_id],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # not in the worker's process group nor its session
                cwd=folder,  # the worker deletes its own working folder for the run
            )
        try:
            ProcessRecord.of(process.pid, env.get("PREFECT_API_URL")).write(
                record_path(flow_run_id)
            )
            _prune(folder)
        except OSError as exc:
            print(f"flow run {flow_run_id}: not recorded ({exc}); it runs", file=sys.stderr)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return process.pid


def _prune(folder: Path) -> None:
    """Remove the records of this host's runs that ended, and the logs of runs that ended
    over :data:`KEEP_LOGS_DAYS` ago, at most once per :data:`PRUNE_EVERY_SECONDS`."""
    marker = folder / ".pruned"
    now = time.time()
    try:
        if now - marker.stat().st_mtime < PRUNE_EVERY_SECONDS:
            return
    except FileNotFoundError:
        pass
    marker.touch()
    running()  # removes the records of ended runs
    oldest = now - KEEP_LOGS_DAYS * 86400
    for log in folder.glob("*.log"):
        try:
            if log.stat().st_mtime < oldest and not log.with_suffix(".json").exists():
                log.unlink()
        except FileNotFoundError:
            continue


def running(api_url: str | None = None) -> dict[str, int]:
    """The detached flow runs of this host still running (of the Prefect API ``api_url``
    only, if given): flow-run id -> supervisor PID. Records of ended runs are removed on the
    way; a record without the process's start time is never taken for a live one (its PID
    may be another process's by now)."""
    found: dict[str, int] = {}
    folder = runs_folder()
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        record = ProcessRecord.read(path)
        if record is None or not record.here():
            continue
        if record.started is not None and record.alive():
            if api_url is None or record.api_url == api_url:
                found[path.stem] = record.pid
        else:
            path.unlink(missing_ok=True)
    return found


def main() -> int:
    flow_run_id = os.environ.get(FLOW_RUN_ENV)
    if not flow_run_id:
        print(f"error: {FLOW_RUN_ENV} is not set: the worker sets it", file=sys.stderr)
        return 1
    pid = launch(flow_run_id, dict(os.environ))
    print(f"flow run {flow_run_id} started as process {pid}, detached from the worker "
          f"(log: {runs_folder() / flow_run_id}.log)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
