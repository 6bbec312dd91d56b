"""The Slurm backend: collector jobs as Slurm job arrays.

One ``sbatch --array`` per submission (the engine submits a batch of jobs at a time, split to
the site's job limit), never one ``sbatch`` per job; one ``squeue`` per poll for every job of
every array, finished ones included (Slurm keeps them visible for ``MinJobAge``, and no
accounting daemon is needed); one ``scancel`` per cancel. Each array task runs
``python -m b2cal.backends.launch`` on one job folder, with its stdout and stderr kept in that
folder (``batch.out``, ``batch.err``); what Slurm itself says before the task starts goes to
``slurm-<array>_<task>.out`` in the submission folder beside the jobs.

Job folders, the input files and the Python environment must be on the shared filesystem
that batch nodes see (``shared_roots`` of the site: checked at submission). Batch jobs outlive
the driver that submitted them: their ids are recorded in their folders, and a restarted
driver picks them up (:meth:`SlurmBackend.attach`) instead of submitting them again.
"""

from __future__ import annotations

import itertools
import logging
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from b2cal.backends.base import (
    Backend,
    Job,
    JobHandle,
    JobReport,
    JobState,
    Limits,
    submission_folder,
)
from b2cal.core.files import atomic_write_bytes
from b2cal.errors import B2CalError
from b2cal.sites import BackendSettings, JobResources

log = logging.getLogger("b2cal.backends")

#: How often Slurm is asked for states unless the site says other.
POLL_SECONDS = 10.0

#: Slurm job states and what they mean for a job.
_STATES = {
    "PENDING": JobState.PENDING,
    "CONFIGURING": JobState.PENDING,
    "REQUEUED": JobState.PENDING,
    "REQUEUE_HOLD": JobState.PENDING,
    "REQUEUE_FED": JobState.PENDING,
    "RESV_DEL_HOLD": JobState.PENDING,
    "RUNNING": JobState.RUNNING,
    "COMPLETING": JobState.RUNNING,
    "SUSPENDED": JobState.RUNNING,
    "STOPPED": JobState.RUNNING,
    "RESIZING": JobState.RUNNING,
    "SIGNALING": JobState.RUNNING,
    "STAGE_OUT": JobState.RUNNING,
    "COMPLETED": JobState.DONE,
    "CANCELLED": JobState.CANCELLED,
}
#: Why a failed job failed, in words.
_FAILURES = {
    "TIMEOUT": "it ran past its wall time",
    "OUT_OF_MEMORY": "it ran out of memory",
    "NODE_FAIL": "its node failed",
    "BOOT_FAIL": "its node failed to boot",
    "PREEMPTED": "it was preempted",
    "DEADLINE": "it missed its deadline",
}
#: Reasons a pending job will never start: asked for more than the partition allows.
_NEVER = {
    "PartitionTimeLimit",
    "PartitionNodeLimit",
    "PartitionConfig",
    "QOSMaxWallDurationPerJobLimit",
    "QOSMaxCpuPerJobLimit",
    "QOSMaxMemoryPerJob",
    "BadConstraints",
    "InvalidQOS",
    "InvalidAccount",
}
#: squeue's columns: array task id, state, reason, exit status (wait status), node.
_FORMAT = "JobArrayID:|,State:|,Reason:|,exit_code:|,NodeList:|"
#: What each array task runs: the list's line of its task, in that job's folder.
_SCRIPT = """#!/bin/bash
# b2cal collector jobs: array task i runs the job folder on line i+1 of the list.
set -u
dir=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {listing})
cd "$dir" || exit 90
exec {python} -m b2cal.backends.launch {target} "$dir" >"$dir/batch.out" 2>"$dir/batch.err"
"""


class SlurmBackend(Backend):
    """Collector jobs as Slurm job arrays (see the module docstring)."""

    name = "slurm"
    reattach = True

    def __init__(
        self,
        limits: Limits | None = None,
        *,
        sbatch_args: Sequence[str] = (),
        python: str | None = None,
        max_array: int = 1000,
        unreachable_seconds: float = 600.0,
    ) -> None:
        super().__init__(limits or Limits(poll_seconds=POLL_SECONDS))
        self.sbatch_args = list(sbatch_args)
        self.python = python or sys.executable
        self.max_array = max_array
        self.unreachable_seconds = unreachable_seconds
        self._lock = threading.Lock()
        self._counter = itertools.count(1)
        self._last: dict[str, JobReport] = {}
        self._unreachable_since: float | None = None
        #: Calls made to Slurm's commands, by command (benchmarks count them).
        self.calls: dict[str, int] = {"sbatch": 0, "squeue": 0, "scancel": 0}

    # --- the interface -------------------------------------------------------------------
    def submit(self, jobs: Sequence[Job]) -> list[JobHandle]:
        """One ``sbatch --array`` per group of jobs asking for the same resources (at most
        ``max_array`` each); a refused submission is a B2CalError with Slurm's words."""
        self.check_folders(jobs)
        handles: list[JobHandle] = []
        groups: dict[tuple[JobResources, str], list[Job]] = {}
        for job in jobs:
            groups.setdefault((job.resources, job.target), []).append(job)
        for (resources, target), group in groups.items():
            for start in range(0, len(group), self.max_array):
                chunk = group[start : start + self.max_array]
                handles.extend(self._submit_array(chunk, resources, target))
        return handles

    def poll(self, handles: Sequence[JobHandle]) -> dict[str, JobReport]:
        """Every job's state from one ``squeue`` over their arrays. A job Slurm no longer
        lists has ended: how, its folder says; a job that vanished without a word failed."""
        if not handles:
            return {}
        listed = self._squeue(sorted({_array(h.job_id) for h in handles}))
        if listed is None:  # Slurm could not be asked: the last states stand, for a while
            return self._unreachable(handles)
        reports = {}
        never: list[JobHandle] = []
        for handle in handles:
            row = listed.get(handle.job_id)
            if row is None:
                report = self._vanished(handle)
            else:
                report = _report(row)
                if report.state is JobState.PENDING and row["reason"] in _NEVER:
                    never.append(handle)
                    report = JobReport(
                        JobState.FAILED,
                        f"Slurm will not start it: {row['reason']} (it asks for more than "
                        "the partition allows: see the site's [backend.resources])",
                    )
            reports[handle.job_id] = report
        if never:
            self.cancel(never)
        with self._lock:
            self._last.update(reports)
        return reports

    def cancel(self, handles: Sequence[JobHandle]) -> None:
        ids = [h.job_id for h in handles]
        for start in range(0, len(ids), 500):
            self._run(["scancel", *ids[start : start + 500]], "scancel", check=False)

    def attach(self, recorded: Sequence[tuple[Job, str]]) -> list[JobHandle]:
        """The recorded jobs Slurm still lists, whatever their state (one ``squeue``)."""
        if not recorded:
            return []
        listed = self._squeue(sorted({_array(job_id) for _, job_id in recorded}))
        if listed is None:
            raise B2CalError(
                "Slurm cannot be asked about the jobs recorded in the job folders (squeue "
                "fails): nothing is submitted again until it answers"
            )
        return [JobHandle(job_id, job) for job, job_id in recorded if job_id in listed]

    # --- Slurm's commands ----------------------------------------------------------------
    def _submit_array(
        self, jobs: Sequence[Job], resources: JobResources, target: str
    ) -> list[JobHandle]:
        folder = submission_folder(jobs, "slurm")
        number = f"{os.getpid()}-{int(time.time() * 1000)}-{next(self._counter)}"
        listing = folder / f"array-{number}.jobs"
        script = folder / f"array-{number}.sh"
        atomic_write_bytes(listing, "".join(f"{job.directory}\n" for job in jobs).encode())
        atomic_write_bytes(
            script,
            _SCRIPT.format(
                listing=shlex.quote(str(listing)),
                python=shlex.quote(self.python),
                target=shlex.quote(target),
            ).encode(),
        )
        name = jobs[0].name.rsplit(".j", 1)[0]
        command = [
            "sbatch",
            "--parsable",
            f"--array=0-{len(jobs) - 1}",
            f"--job-name=b2cal-{name}",
            f"--output={folder / 'slurm-%A_%a.out'}",
            f"--cpus-per-task={resources.cores}",
            *([f"--mem={resources.memory_mb}M"] if resources.memory_mb else []),
            *([f"--time={resources.wall_minutes}"] if resources.wall_minutes else []),
            *([f"--partition={resources.queue}"] if resources.queue else []),
            *self.sbatch_args,
            str(script),
        ]
        answer = self._run(command, "sbatch")
        array = answer.strip().split(";")[0]
        if not array.isdigit():
            raise B2CalError(f"sbatch answered {answer.strip()!r}, not a job id")
        log.info("slurm: array %s of %d jobs (%s)", array, len(jobs), name)
        return [JobHandle(f"{array}_{index}", job) for index, job in enumerate(jobs)]

    def _squeue(self, arrays: Sequence[str]) -> dict[str, dict[str, str]] | None:
        """Rows of the arrays' tasks by task id (``123_4``); None if Slurm cannot be asked."""
        command = ["squeue", "-r", "-t", "all", "-h", "-O", _FORMAT, "-j", ",".join(arrays)]
        try:
            result = self._call(command, "squeue")
        except B2CalError as exc:
            log.warning("slurm: %s", exc)
            return None
        if result.returncode != 0:
            if "Invalid job id" in result.stderr:
                return {}  # none of them is known any more
            log.warning("slurm: squeue failed: %s", _first_line(result.stderr))
            return None
        with self._lock:
            self._unreachable_since = None
        rows = {}
        for line in result.stdout.splitlines():
            fields = line.split("|")
            if len(fields) >= 5:
                task, state, reason, code, node = (f.strip() for f in fields[:5])
                rows[task] = {"state": state, "reason": reason, "exit": code, "node": node}
        return rows

    def _unreachable(self, handles: Sequence[JobHandle]) -> dict[str, JobReport]:
        with self._lock:
            now = time.monotonic()
            since = self._unreachable_since = self._unreachable_since or now
            if now - since < self.unreachable_seconds:
                last = self._last
                return {h.job_id: last.get(h.job_id, JobReport(JobState.PENDING)) for h in handles}
        reason = f"Slurm could not be asked for {self.unreachable_seconds:g} s (squeue fails)"
        return {h.job_id: JobReport(JobState.FAILED, reason) for h in handles}

    def _vanished(self, handle: JobHandle) -> JobReport:
        """A job squeue no longer lists: ended long ago (its folder's status says how), or
        gone without a trace."""
        status = handle.job.directory / "status.json"
        if status.is_file():
            return JobReport(JobState.DONE)  # the engine reads the status itself
        return JobReport(
            JobState.FAILED,
            "it vanished from the Slurm queue without writing its status"
            + _tail(handle.job.directory / "batch.err"),
        )

    def _run(self, command: list[str], what: str, check: bool = True) -> str:
        result = self._call(command, what)
        if check and result.returncode != 0:
            raise B2CalError(f"Slurm refused the submission ({what}): {_first_line(result.stderr)}")
        return result.stdout

    def _call(self, command: list[str], what: str) -> subprocess.CompletedProcess[str]:
        if shutil.which(command[0]) is None:
            raise B2CalError(
                f"{command[0]} not found: the slurm backend needs Slurm's commands on PATH "
                "(and SLURM_CONF if its configuration is not in /etc/slurm)"
            )
        with self._lock:
            self.calls[what] = self.calls.get(what, 0) + 1
        try:
            return subprocess.run(command, capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            raise B2CalError(f"{what} did not answer within 120 s") from None


def _report(row: dict[str, str]) -> JobReport:
    state = row["state"]
    if state in _STATES:
        mapped = _STATES[state]
        reason = "cancelled in Slurm" if mapped is JobState.CANCELLED else ""
        return JobReport(mapped, reason)
    words = _FAILURES.get(state) or _exit_words(row["exit"]) or state.lower()
    on = f" on {row['node']}" if row["node"] else ""
    return JobReport(JobState.FAILED, f"{words}{on} (Slurm: {state}, {row['reason']})")


def _exit_words(code: str) -> str:
    """Slurm's exit_code column is a wait status: exit code in the high byte, signal low."""
    try:
        status = int(code)
    except ValueError:
        return ""
    if status & 0x7F:
        return f"killed by signal {status & 0x7F}"
    return f"exit status {status >> 8}" if status else ""


def _array(job_id: str) -> str:
    return job_id.split("_", 1)[0]


def _first_line(text: str) -> str:
    """What a Slurm command said went wrong, in one line (its error lines, joined)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line.split("error: ", 1)[1] for line in lines if "error: " in line]
    return "; ".join(dict.fromkeys(errors or lines or ["no message"]))


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return ""
    return ": " + " | ".join(text) if text else ""


def open_slurm(settings: BackendSettings) -> SlurmBackend:
    """The Slurm backend as a site configures it: ``[backend] job_limit``, ``retries``,
    ``poll_seconds`` (default 10), ``shared_roots``, ``[backend.resources]`` (partition as
    ``queue``), and in ``[backend.options]``: ``sbatch_args`` (a list), ``python`` (the
    interpreter batch nodes run), ``max_array``."""
    options: dict[str, Any] = dict(settings.options)
    unknown = sorted(set(options) - {"sbatch_args", "python", "max_array"})
    if unknown:
        raise B2CalError(f"[backend.options] of the slurm backend: unknown {', '.join(unknown)}")
    args = options.get("sbatch_args", [])
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise B2CalError("[backend.options] sbatch_args must be a list of strings")
    return SlurmBackend(
        Limits.of(settings, POLL_SECONDS),
        sbatch_args=args,
        python=options.get("python"),
        max_array=int(options.get("max_array", 1000)),
    )
