"""The HTCondor backend's state machine: submit, follow, remove, pick up again.

A job's id is ``<schedd>#<cluster>.<proc>``: cluster ids are unique per schedd only, and a
site may have several access points, so a restarted driver asks the schedd that holds the
job. Queries are restricted to the owner the schedd recorded for this backend's submissions
(taken from the cluster ad a submission returns, per schedd; until then nothing is assumed),
and a job found by its id is taken for the folder's own only if its ``B2CalJobDir`` names that
folder. A job the owner's query misses while its event log shows no end is asked for again by
its cluster alone before it counts as gone: the owner recorded may not be the one assumed.

Never twice at once: before a submission the schedd is asked for jobs already tagged with the
folders (a driver that died between submitting and recording its ids left them), and those are
followed instead of submitting again, except jobs being removed: a folder whose job is leaving
the queue gets its new one only once the old one is gone (the submission waits for that); a job
counts as ended only once it has left the queue or
its event log says it was aborted, since a removed or held job may still be running on its
node. The states of one schedd are asked for once per poll interval, whatever the number of
collections polling, and a schedd that does not answer leaves the last known states standing
for ``unreachable_seconds`` before its jobs are failed.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
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
from b2cal.backends.htcondor.description import FOLDER_ATTRIBUTE, item_data, submit_description
from b2cal.backends.htcondor.eventlog import EventLogs, log_name
from b2cal.backends.htcondor.options import HTCondorOptions
from b2cal.backends.htcondor.schedd import (
    Connector,
    ScheddLink,
    ScheddUnreachable,
    checked,
    in_folders,
    locate_schedd,
    owned_by,
)
from b2cal.backends.htcondor.states import (
    COMPLETED,
    PROJECTION,
    REMOVED,
    Patience,
    judge,
)
from b2cal.errors import B2CalError
from b2cal.sites import JobResources

log = logging.getLogger("b2cal.backends")

#: How often the schedd is asked for states unless the site says other.
POLL_SECONDS = 15.0


@dataclass
class _Queue:
    """One schedd's answer: the ads of the clusters asked for, and when."""

    at: float
    clusters: frozenset[int]
    ads: dict[str, Mapping[str, Any]]


class HTCondorBackend(Backend):
    """Collector jobs as HTCondor clusters (see the module docstring)."""

    name = "htcondor"
    reattach = True

    def __init__(
        self,
        limits: Limits | None = None,
        options: HTCondorOptions | None = None,
        *,
        connect: Connector = locate_schedd,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(limits or Limits(poll_seconds=POLL_SECONDS))
        self.options = options or HTCondorOptions()
        self.python = self.options.python or sys.executable
        self.patience = Patience(self.options.idle_limit_minutes * 60, self.options.max_starts)
        self._connect = connect
        self._clock = clock
        self._sleep = sleep
        self._home = ScheddLink(self.options.schedd, self.options.pool, connect)
        self._links: dict[str, ScheddLink] = {}
        #: The Owner each schedd records for this backend's jobs (from its submissions).
        self._owners: dict[str, str] = {}
        self._lock = threading.RLock()  # one poll at a time: the others use its answer
        self._counter = itertools.count(1)
        self._queues: dict[str, _Queue] = {}
        self._wanted: dict[str, dict[int, float]] = {}
        self._last: dict[str, JobReport] = {}
        self._unreachable_since: dict[str, float] = {}
        #: Jobs b2cal removes, with how each then ends (they are followed until they leave).
        self._removing: dict[str, JobReport] = {}
        self._logs = EventLogs()

    # --- the interface -------------------------------------------------------------------
    def submit(self, jobs: Sequence[Job]) -> list[JobHandle]:
        """One cluster per group of jobs asking for the same resources; jobs of these folders
        already in the queue (unrecorded: their driver died) are followed instead."""
        self.check_folders(jobs)
        link = self._home
        left = self._after_removals(link, jobs)
        handles: dict[Path, JobHandle] = {
            job.directory: JobHandle(left[str(job.directory)], job)
            for job in jobs
            if str(job.directory) in left
        }
        if handles:
            log.warning(
                "htcondor: %d jobs of these folders are still queued (their driver died "
                "before recording them): followed, not submitted again",
                len(handles),
            )
        groups: dict[tuple[JobResources, str], list[Job]] = {}
        for job in jobs:
            if job.directory not in handles:
                groups.setdefault((job.resources, job.target), []).append(job)
        for (resources, target), group in groups.items():
            cluster = self._submit_cluster(link, group, resources, target)
            for proc, job in enumerate(group):
                handles[job.directory] = JobHandle(f"{link.name}#{cluster}.{proc}", job)
        return [handles[job.directory] for job in jobs]

    def poll(self, handles: Sequence[JobHandle]) -> dict[str, JobReport]:
        """Every job's state: one query per schedd and poll interval (see the module
        docstring); jobs that left the queue are read from their event logs."""
        reports: dict[str, JobReport] = {}
        with self._lock:
            for schedd, group in self._by_schedd(handles).items():
                reports.update(self._poll_schedd(schedd, group))
            for job_id, report in reports.items():
                if report.state.finished:  # nothing more is asked of an ended job
                    self._last.pop(job_id, None)
                    self._removing.pop(job_id, None)
                else:
                    self._last[job_id] = report
        return reports

    def cancel(self, handles: Sequence[JobHandle]) -> None:
        """Remove the jobs; each is reported cancelled once it has left the queue."""
        with self._lock:
            for schedd, group in self._by_schedd(handles).items():
                for handle in group:
                    self._removing.setdefault(
                        handle.job_id, JobReport(JobState.CANCELLED, "cancelled by b2cal")
                    )
                try:
                    self._remove(self._link(schedd), group, "cancelled by b2cal")
                except ScheddUnreachable as exc:
                    raise B2CalError(f"HTCondor jobs could not be removed: {exc}") from None

    def attach(self, recorded: Sequence[tuple[Job, str]]) -> list[JobHandle]:
        """The recorded jobs their schedd still holds and that are the folders' own (or that
        ended and are in their event log)."""
        handles = [JobHandle(job_id, job) for job, job_id in recorded]
        found = []
        with self._lock:
            for schedd, group in self._by_schedd(handles).items():
                link = self._link(schedd)
                clusters = [_cluster(h.job_id) for h in group]
                try:
                    ads = self._ask(link, clusters, self._owners.get(link.name))
                except ScheddUnreachable as exc:
                    raise B2CalError(
                        f"HTCondor cannot be asked about the jobs recorded in the job folders "
                        f"({exc}): nothing is submitted again until it answers"
                    ) from None
                logged = self._logged(link, [h.job.directory for h in group])
                for handle in group:
                    ad = ads.get(_local(handle.job_id))
                    if ad is not None and not _owns(ad, handle):
                        log.warning(
                            "htcondor: job %s belongs to %s, not to %s: not picked up",
                            handle.job_id, ad.get(FOLDER_ATTRIBUTE), handle.job.directory,
                        )  # fmt: skip
                    elif ad is not None or _local(handle.job_id) in logged:
                        found.append(handle)
        return found

    # --- following jobs ------------------------------------------------------------------
    def _poll_schedd(self, schedd: str, group: list[JobHandle]) -> dict[str, JobReport]:
        link = self._link(schedd)
        now = self._clock()
        try:
            ads = self._queue(link, [_cluster(h.job_id) for h in group], now)
            ads = self._unlisted(link, group, ads)
        except ScheddUnreachable as exc:
            return self._unanswered(link.name, group, now, str(exc))
        self._unreachable_since.pop(link.name, None)
        logged: dict[str, JobReport] | None = None
        reports: dict[str, JobReport] = {}
        doomed: list[JobHandle] = []
        for handle in group:
            key, job_id = _local(handle.job_id), handle.job_id
            ad = ads.get(key)
            if ad is not None and int(ad.get("JobStatus", 0)) != REMOVED:
                verdict = judge(ad, now, self.patience)
                if verdict.remove:
                    self._removing.setdefault(job_id, verdict.report)
                if job_id in self._removing:
                    doomed.append(handle)
                    why = self._removing[job_id].reason
                    reports[job_id] = JobReport(JobState.RUNNING, f"being removed: {why}")
                else:
                    reports[job_id] = verdict.report
                continue
            if logged is None:
                logged = self._logged(link, [h.job.directory for h in group])
            said = logged.get(key)
            if ad is not None and (said is None or said.state is not JobState.CANCELLED):
                reports[job_id] = judge(ad, now, self.patience).report  # removed, not gone
                continue
            reports[job_id] = self._gone(handle, said)
        if doomed:
            try:
                self._remove(link, doomed, "b2cal: it would never end by itself")
            except (ScheddUnreachable, B2CalError) as exc:
                log.warning("htcondor: %s (asked again at the next poll)", exc)
        return reports

    def _unlisted(
        self, link: ScheddLink, group: list[JobHandle], ads: dict[str, Any]
    ) -> dict[str, Any]:
        """``ads`` and those of ``group``'s jobs the owner's query missed though their event logs
        show no end, asked for by cluster alone: a job counts as gone only once the schedd
        confirms it (the Owner it records may not be the one taken)."""
        owner = self._owners.get(link.name)
        missing = [h for h in group if _local(h.job_id) not in ads]
        if owner is None or not missing:
            return ads  # the query had no owner term: what it missed has left the queue
        logged = self._logged(link, [h.job.directory for h in missing])
        unended = [h for h in missing if not _ended(logged.get(_local(h.job_id)))]
        if not unended:
            return ads
        found = self._ask(link, [_cluster(h.job_id) for h in unended], None)
        for handle in unended:
            ad = found.get(_local(handle.job_id))
            recorded = str(ad.get("Owner") or "") if ad is not None else ""
            if ad is not None and _owns(ad, handle) and recorded not in ("", owner):
                log.warning(
                    "htcondor: schedd %s records the owner %s, not %s: asked for from now on",
                    link.name, recorded, owner,
                )  # fmt: skip
                self._owners[link.name] = recorded
                self._queues.pop(link.name, None)
        return {**ads, **found}

    def _gone(self, handle: JobHandle, said: JobReport | None) -> JobReport:
        """A job that has left the queue (or whose log says it was aborted): its end."""
        removing = self._removing.pop(handle.job_id, None)
        if said is not None and said.state.finished:
            return removing if removing and said.state is JobState.CANCELLED else said
        if (handle.job.directory / "status.json").is_file():
            return JobReport(JobState.DONE)  # its end was not logged, but it wrote its status
        if removing is not None:
            return removing
        last = f" (last: {said.reason})" if said is not None and said.reason else ""
        return JobReport(
            JobState.FAILED, f"it left the HTCondor queue without an end in its event log{last}"
        )

    def _unanswered(
        self, schedd: str, group: list[JobHandle], now: float, error: str
    ) -> dict[str, JobReport]:
        """The last known states while the schedd has not answered for less than
        ``unreachable_seconds``; failures after that."""
        since = self._unreachable_since.setdefault(schedd, now)
        limit = self.options.unreachable_seconds
        if now - since < limit:
            log.warning("htcondor: %s (the last states stand)", error)
            pending = JobReport(JobState.PENDING)
            return {h.job_id: self._last.get(h.job_id, pending) for h in group}
        reason = f"the HTCondor schedd {schedd} did not answer for {limit:g} s ({error})"
        return {h.job_id: JobReport(JobState.FAILED, reason) for h in group}

    # --- the schedd ----------------------------------------------------------------------
    def _queue(self, link: ScheddLink, clusters: list[int], now: float) -> dict[str, Any]:
        """The ads of ``clusters``: the answer of this poll interval if it covers them, else
        one query for them and the clusters other collections asked for lately."""
        name = link.name
        wanted = self._wanted.setdefault(name, {})
        for cluster in clusters:
            wanted[cluster] = now
        cached = self._queues.get(name)
        fresh = cached is not None and now - cached.at < self.poll_seconds / 2
        if cached is not None and fresh and set(clusters) <= cached.clusters:
            return cached.ads
        recent = now - 3 * self.poll_seconds
        for cluster in [c for c, at in wanted.items() if at < recent]:
            del wanted[cluster]
        asked = frozenset(wanted)
        ads = self._ask(link, list(asked), self._owners.get(name))
        self._queues[name] = _Queue(now, asked, ads)
        return ads

    def _ask(
        self, link: ScheddLink, clusters: list[int], owner: str | None
    ) -> dict[str, Mapping[str, Any]]:
        constraint = owned_by(owner, clusters)
        ads = link.call("query", lambda s: s.query(constraint=constraint, projection=PROJECTION))
        return {f"{ad['ClusterId']}.{ad['ProcId']}": ad for ad in ads}

    def _after_removals(self, link: ScheddLink, jobs: Sequence[Job]) -> dict[str, str]:
        """:meth:`_left_in_queue` once none of ``jobs``' folders has a job being removed that
        may still run; B2CalError if one has not left after ``unreachable_seconds``."""
        limit = self.options.unreachable_seconds
        deadline = self._clock() + limit
        left, leaving = self._left_in_queue(link, jobs)
        while leaving:
            if self._clock() >= deadline:
                raise B2CalError(
                    f"HTCondor is still removing the last job of {len(leaving)} job folders "
                    f"({sorted(leaving)[0]}) after {limit:g} s: nothing is submitted into a "
                    "folder whose job may still run (the next try looks again)"
                )
            log.info("htcondor: %d job folders wait for their removed job to leave", len(leaving))
            self._sleep(self.poll_seconds)
            left, leaving = self._left_in_queue(link, jobs)
        return left

    def _left_in_queue(
        self, link: ScheddLink, jobs: Sequence[Job]
    ) -> tuple[dict[str, str], set[str]]:
        """Jobs of ``jobs``' folders the schedd still holds: by folder the newest that has not
        completed and is not being removed (to follow); and the folders with none such but a job
        being removed whose event log does not say aborted yet (to wait for)."""
        owner = self._owners.get(link.name)
        constraint = in_folders(owner, [str(job.directory) for job in jobs])
        try:
            ads = link.call(
                "query", lambda s: s.query(constraint=constraint, projection=PROJECTION)
            )
        except ScheddUnreachable as exc:
            raise B2CalError(f"HTCondor refused the submission: {exc}") from None
        left: dict[str, tuple[int, str]] = {}
        leaving: set[str] = set()
        logged: dict[str, JobReport] | None = None
        for ad in ads:
            status = int(ad.get("JobStatus", 0))
            key, folder = f"{ad['ClusterId']}.{ad['ProcId']}", str(ad.get(FOLDER_ATTRIBUTE))
            if status == REMOVED:
                if logged is None:
                    logged = self._logged(link, [job.directory for job in jobs])
                said = logged.get(key)
                if said is None or said.state is not JobState.CANCELLED:
                    leaving.add(folder)
            elif status != COMPLETED:
                rank = (int(ad["ClusterId"]), key)
                left[folder] = max(left.get(folder, rank), rank)
        followed = {folder: f"{link.name}#{rank[1]}" for folder, rank in left.items()}
        return followed, leaving - set(left)

    def _submit_cluster(
        self, link: ScheddLink, group: list[Job], resources: JobResources, target: str
    ) -> int:
        import htcondor2

        folder = submission_folder(group, "htcondor")
        number = f"{os.getpid()}-{int(time.time() * 1000)}-{next(self._counter)}"
        events = folder / log_name(link.name, number)
        description = htcondor2.Submit(
            submit_description(target, self.python, resources, events, self.options)
        )
        items = item_data(group)
        if self.options.credentials:
            _issue_credentials(description)
        try:
            result = link.call("submit", lambda s: s.submit(description, itemdata=iter(items)))
        except ScheddUnreachable as exc:  # it may have queued the cluster, its answer lost
            raise B2CalError(
                f"HTCondor did not confirm the submission ({exc}): whether the jobs were queued "
                "is unknown; the next try follows them if they were (found by their folder tag)"
            ) from None
        cluster = int(result.cluster())
        owner = result.clusterad().get("Owner")
        if owner:  # what the schedd records: the submitting user's name may be another
            self._owners.setdefault(link.name, str(owner))
        log.info("htcondor: cluster %s of %d jobs on %s", cluster, len(group), link.name)
        return cluster

    def _remove(self, link: ScheddLink, handles: Sequence[JobHandle], reason: str) -> None:
        import htcondor2

        ids = [_local(h.job_id) for h in handles]
        # the bindings take a reason as (text, code); a plain string would be dropped
        result = link.call(
            "remove", lambda s: s.act(htcondor2.JobAction.Remove, ids, reason=(reason, 0))
        )
        checked(result, "the removal")

    def _logged(self, link: ScheddLink, directories: Sequence[Path]) -> dict[str, JobReport]:
        """What the event logs beside the job folders ``directories`` say of ``link``'s jobs."""
        folders = [directory.parent / ".htcondor" for directory in directories]
        return self._logs.reports(folders, link.name, legacy=link is self._home)

    def _link(self, schedd: str) -> ScheddLink:
        if not schedd or schedd == self._home.name:
            return self._home
        if schedd not in self._links:
            self._links[schedd] = ScheddLink(schedd, self.options.pool, self._connect)
        return self._links[schedd]

    def _by_schedd(self, handles: Sequence[JobHandle]) -> dict[str, list[JobHandle]]:
        groups: dict[str, list[JobHandle]] = {}
        for handle in handles:
            schedd = handle.job_id.partition("#")[0] if "#" in handle.job_id else ""
            groups.setdefault(schedd, []).append(handle)
        return groups


def _issue_credentials(description: Any) -> None:
    """Credentials the pool asks for (Kerberos, AFS tokens, OAuth), as condor_submit sends."""
    import htcondor2

    try:
        url = description.issue_credentials()
    except htcondor2.HTCondorException as exc:
        raise B2CalError(f"HTCondor credentials could not be issued: {exc}") from None
    if url:
        raise B2CalError(f"HTCondor needs a credential first: visit {url} and submit again")


def _local(job_id: str) -> str:
    """``cluster.proc`` of a job id (with or without its schedd)."""
    return job_id.rpartition("#")[2]


def _cluster(job_id: str) -> int:
    return int(_local(job_id).split(".")[0])


def _ended(said: JobReport | None) -> bool:
    return said is not None and said.state.finished


def _owns(ad: Mapping[str, Any], handle: JobHandle) -> bool:
    """Whether the job ad is the handle's folder's: tagged with it. An untagged job is taken
    only under a legacy id (no schedd in it), recorded before jobs were tagged."""
    tag = ad.get(FOLDER_ATTRIBUTE)
    if tag is None:
        return "#" not in handle.job_id
    return str(tag) == str(handle.job.directory)
