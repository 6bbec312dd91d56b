"""The HTCondor backend: collector jobs as one cluster per submission, through HTCondor's Python
bindings (the ``htcondor`` wheel; its module is ``htcondor2``, ``import htcondor`` fails).

One ``Schedd.submit`` with item data per submission (a cluster whose procs are the jobs, like a
Slurm array); one schedd query per poll for every job still in the queue, and for those that
have left it the cluster's job event log (``.htcondor/events-*.log`` beside the jobs), read
with ``htcondor2.JobEventLog``; held jobs are failed with their hold reason and removed;
cancel is one ``Remove`` action. Jobs run in place on the shared filesystem (no file
transfer), in their own folder, with the submitter's environment, their stdout and stderr in
``batch.out`` and ``batch.err`` there. Jobs outlive their driver: a restarted one picks them up
by the ids recorded in their folders.

Site settings: ``[backend.resources]`` (``queue`` is the accounting group), and in
``[backend.options]``: ``schedd`` (its name, else the local one), ``pool`` (the collector to
find it with), ``python`` (the interpreter execute nodes run), ``submit`` (more submit
commands, a table).
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
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
from b2cal.errors import B2CalError
from b2cal.sites import BackendSettings, JobResources

log = logging.getLogger("b2cal.backends")

#: How often the schedd is asked for states unless the site says other.
POLL_SECONDS = 15.0

#: What a job ad says, as asked for in every query.
PROJECTION = [
    "ClusterId", "ProcId", "JobStatus", "HoldReason", "ExitCode", "ExitBySignal", "ExitSignal",
    "RemoteHost", "LastRemoteHost",
]  # fmt: skip
#: HTCondor's JobStatus values.
IDLE, RUNNING, REMOVED, COMPLETED, HELD, TRANSFERRING_OUTPUT, SUSPENDED = range(1, 8)


def submit_description(
    target: str,
    python: str,
    resources: JobResources,
    event_log: Path,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The submit description of one cluster of jobs; each proc gets its folder as the item
    ``job_dir`` (:func:`item_data`)."""
    description = {
        "universe": "vanilla",
        "executable": python,
        "arguments": f"-m b2cal.backends.launch {target} $(job_dir)",
        "initialdir": "$(job_dir)",
        "output": "$(job_dir)/batch.out",
        "error": "$(job_dir)/batch.err",
        "log": str(event_log),
        "getenv": "true",
        "should_transfer_files": "NO",
        "request_cpus": str(resources.cores),
        "batch_name": "b2cal",
    }
    if resources.memory_mb:
        description["request_memory"] = str(resources.memory_mb)
    if resources.wall_minutes:
        description["allowed_execute_duration"] = str(resources.wall_minutes * 60)
    if resources.queue:
        description["accounting_group"] = resources.queue
    description.update(extra or {})
    return description


def item_data(jobs: Sequence[Job]) -> list[dict[str, str]]:
    return [{"job_dir": str(job.directory)} for job in jobs]


def report_from_ad(ad: Mapping[str, Any]) -> JobReport:
    """A job's state from its ad in the queue (or in the history)."""
    status = int(ad.get("JobStatus", IDLE))
    host = ad.get("RemoteHost") or ad.get("LastRemoteHost") or ""
    on = f" on {str(host).split('@')[-1]}" if host else ""
    if status in (IDLE,):
        return JobReport(JobState.PENDING)
    if status in (RUNNING, TRANSFERRING_OUTPUT, SUSPENDED):
        return JobReport(JobState.RUNNING)
    if status == REMOVED:
        return JobReport(JobState.CANCELLED, "removed from the HTCondor queue")
    if status == HELD:
        return JobReport(JobState.FAILED, f"held{on}: {ad.get('HoldReason') or 'no reason given'}")
    if ad.get("ExitBySignal"):
        return JobReport(JobState.FAILED, f"killed by signal {ad.get('ExitSignal')}{on}")
    code = int(ad.get("ExitCode", 0) or 0)
    if code:
        return JobReport(JobState.FAILED, f"exit status {code}{on}")
    return JobReport(JobState.DONE)


def reports_from_event_log(path: Path) -> dict[str, JobReport]:
    """What a cluster's job event log says of each job's end (or where it is), by id
    ``cluster.proc``: the last event of each job that tells its state."""
    import htcondor2

    kinds = htcondor2.JobEventType
    found: dict[str, JobReport] = {}
    try:
        events = list(htcondor2.JobEventLog(str(path)).events(stop_after=0))
    except htcondor2.HTCondorException as exc:
        raise B2CalError(f"job event log {path} cannot be read: {exc}") from None
    for event in events:
        job_id = f"{event.cluster}.{event.proc}"
        if event.type == kinds.SUBMIT:
            found[job_id] = JobReport(JobState.PENDING)
        elif event.type == kinds.EXECUTE:
            found[job_id] = JobReport(JobState.RUNNING)
        elif event.type == kinds.JOB_TERMINATED:
            if event.get("TerminatedNormally"):
                code = int(event.get("ReturnValue", 0))
                found[job_id] = (
                    JobReport(JobState.DONE)
                    if code == 0
                    else JobReport(JobState.FAILED, f"exit status {code}")
                )
            else:
                signal = event.get("TerminatedBySignal")
                found[job_id] = JobReport(JobState.FAILED, f"killed by signal {signal}")
        elif event.type == kinds.JOB_HELD:
            found[job_id] = JobReport(JobState.FAILED, f"held: {event.get('HoldReason', '')}")
        elif event.type == kinds.JOB_ABORTED:
            reason = event.get("Reason") or "removed"
            found[job_id] = JobReport(JobState.CANCELLED, f"removed from the queue ({reason})")
        elif event.type == kinds.JOB_RELEASED:
            found[job_id] = JobReport(JobState.PENDING)
    return found


class HTCondorBackend(Backend):
    """Collector jobs as HTCondor clusters (see the module docstring)."""

    name = "htcondor"
    reattach = True

    def __init__(
        self,
        limits: Limits | None = None,
        *,
        schedd: str | None = None,
        pool: str | None = None,
        python: str | None = None,
        submit: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(limits or Limits(poll_seconds=POLL_SECONDS))
        self.schedd_name = schedd
        self.pool = pool
        self.python = python or sys.executable
        self.extra = dict(submit or {})
        self._schedd: Any = None
        self._lock = threading.Lock()
        self._counter = itertools.count(1)

    def submit(self, jobs: Sequence[Job]) -> list[JobHandle]:
        """One cluster per group of jobs asking for the same resources."""
        self.check_folders(jobs)
        handles: list[JobHandle] = []
        groups: dict[tuple[JobResources, str], list[Job]] = {}
        for job in jobs:
            groups.setdefault((job.resources, job.target), []).append(job)
        for (resources, target), group in groups.items():
            folder = submission_folder(group, "htcondor")
            number = f"{os.getpid()}-{int(time.time() * 1000)}-{next(self._counter)}"
            events = folder / f"events-{number}.log"
            description = submit_description(target, self.python, resources, events, self.extra)
            cluster = self._submit(description, item_data(group))
            log.info("htcondor: cluster %s of %d jobs", cluster, len(group))
            handles.extend(JobHandle(f"{cluster}.{proc}", job) for proc, job in enumerate(group))
        return handles

    def poll(self, handles: Sequence[JobHandle]) -> dict[str, JobReport]:
        if not handles:
            return {}
        queued = self._query(handles)
        reports: dict[str, JobReport] = {}
        held = []
        logged: dict[str, JobReport] | None = None
        for handle in handles:
            ad = queued.get(handle.job_id)
            if ad is not None:
                reports[handle.job_id] = report_from_ad(ad)
                if int(ad.get("JobStatus", 0)) == HELD:
                    held.append(handle)
                continue
            if logged is None:  # left the queue: its cluster's event log says how it ended
                logged = self._logged(handles)
            report = logged.get(handle.job_id)
            if report is None or not report.state.finished:
                report = JobReport(
                    JobState.FAILED, "it left the HTCondor queue without an end in its event log"
                )
            reports[handle.job_id] = report
        if held:
            self.cancel(held)  # a held job never runs again by itself
        return reports

    def cancel(self, handles: Sequence[JobHandle]) -> None:
        if not handles:
            return
        import htcondor2

        schedd = self._connect()
        try:
            schedd.act(htcondor2.JobAction.Remove, [h.job_id for h in handles])
        except htcondor2.HTCondorException as exc:
            raise B2CalError(f"HTCondor refused to remove jobs: {exc}") from None

    def attach(self, recorded: Sequence[tuple[Job, str]]) -> list[JobHandle]:
        handles = [JobHandle(job_id, job) for job, job_id in recorded]
        queued = self._query(handles)
        logged = self._logged(handles)
        return [h for h in handles if h.job_id in queued or h.job_id in logged]

    # --- the schedd ----------------------------------------------------------------------
    def _connect(self) -> Any:
        import htcondor2

        with self._lock:
            if self._schedd is None:
                try:
                    if self.schedd_name or self.pool:
                        collector = (
                            htcondor2.Collector(self.pool) if self.pool else htcondor2.Collector()
                        )
                        ad = collector.locate(htcondor2.DaemonType.Schedd, self.schedd_name)
                        self._schedd = htcondor2.Schedd(ad)
                    else:
                        self._schedd = htcondor2.Schedd()
                except (htcondor2.HTCondorException, OSError, ValueError) as exc:
                    where = self.schedd_name or "the local schedd"
                    raise B2CalError(
                        f"HTCondor schedd cannot be reached ({where}): {exc}"
                    ) from None
            return self._schedd

    def _submit(self, description: dict[str, str], items: list[dict[str, str]]) -> int:
        import htcondor2

        schedd = self._connect()
        try:
            result = schedd.submit(htcondor2.Submit(description), itemdata=iter(items))
        except htcondor2.HTCondorException as exc:
            raise B2CalError(f"HTCondor refused the submission: {exc}") from None
        return int(result.cluster())

    def _query(self, handles: Sequence[JobHandle]) -> dict[str, Mapping[str, Any]]:
        import htcondor2

        clusters = sorted({h.job_id.split(".")[0] for h in handles})
        constraint = " || ".join(f"ClusterId == {c}" for c in clusters)
        schedd = self._connect()
        try:
            ads = schedd.query(constraint=constraint, projection=PROJECTION)
        except htcondor2.HTCondorException as exc:
            raise B2CalError(f"the HTCondor schedd does not answer: {exc}") from None
        return {f"{ad['ClusterId']}.{ad['ProcId']}": ad for ad in ads}

    def _logged(self, handles: Sequence[JobHandle]) -> dict[str, JobReport]:
        found: dict[str, JobReport] = {}
        for path in _event_logs(handles):
            found.update(reports_from_event_log(path))
        return found


def _event_logs(handles: Sequence[JobHandle]) -> Iterator[Path]:
    folders = {h.job.directory.parent / ".htcondor" for h in handles}
    for folder in sorted(folders):
        yield from sorted(folder.glob("events-*.log"))


def open_htcondor(settings: BackendSettings) -> HTCondorBackend:
    """The HTCondor backend as a site configures it (see the module docstring)."""
    options: dict[str, Any] = dict(settings.options)
    unknown = sorted(set(options) - {"schedd", "pool", "python", "submit"})
    if unknown:
        raise B2CalError(f"[backend.options] of the htcondor backend: unknown {', '.join(unknown)}")
    submit = options.get("submit", {})
    if not isinstance(submit, dict):
        raise B2CalError("[backend.options] submit must be a table of submit commands")
    return HTCondorBackend(
        Limits.of(settings, POLL_SECONDS),
        schedd=options.get("schedd"),
        pool=options.get("pool"),
        python=options.get("python"),
        submit={str(k): str(v) for k, v in submit.items()},
    )
