"""A stand-in for HTCondor schedds, for the backend's state machine: no schedd can run on these
machines (Debian has no HTCondor package, the ``htcondor`` wheel holds only the bindings).

It follows HTCondor's documented behaviour where the backend depends on it: a submission is one
cluster (numbered per schedd, so two schedds hand out the same ids) of one proc per item, with
the ad attributes the submit description sets; ``JobStatus`` 1-7; a removed job stays in the
queue with status 3 until its starter is gone (``removal_steps`` calls of :meth:`step`); held
jobs carry ``HoldReason``, ``HoldReasonCode`` and ``HoldReasonSubCode``; a job that leaves the
queue goes to the history; queries are ClassAd constraints, evaluated by the real ``classad2``;
``act`` answers as the bindings do (``TotalSuccess``...), and takes a reason as the bindings
pass it on (a ``(text, code)`` tuple; a plain string is dropped); every state change is written
to the cluster's job event log in HTCondor's format, read back by the real ``JobEventLog``.
The Owner a schedd records is its ``owner`` (the authenticated identity, which may not be the
local user name); the cluster ad a submission returns says ``submitter`` (the same unless a test
sets it apart). A schedd can be made to time out before a call (``timeouts``) or after queuing
a submission (``lost_answers``), and it fails a test if two threads call it at once or a job is
submitted into the folder of one that may still run.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import classad2
import htcondor2

from b2cal.errors import B2CalError

USAGE = (
    "\t\tUsr 0 00:00:01, Sys 0 00:00:00  -  Run Remote Usage\n"
    "\t\tUsr 0 00:00:00, Sys 0 00:00:00  -  Run Local Usage\n"
    "\t\tUsr 0 00:00:01, Sys 0 00:00:00  -  Total Remote Usage\n"
    "\t\tUsr 0 00:00:00, Sys 0 00:00:00  -  Total Local Usage\n"
    "\t0  -  Run Bytes Sent By Job\n\t0  -  Run Bytes Received By Job\n"
    "\t0  -  Total Bytes Sent By Job\n\t0  -  Total Bytes Received By Job\n"
)
EVICTED_USAGE = (
    "\t\tUsr 0 00:00:00, Sys 0 00:00:00  -  Run Remote Usage\n"
    "\t\tUsr 0 00:00:00, Sys 0 00:00:00  -  Run Local Usage\n"
    "\t0  -  Run Bytes Sent By Job\n\t0  -  Run Bytes Received By Job\n"
)


def event(code: int, job: str, body: str = "") -> str:
    """One event as HTCondor writes it to a job event log (``job``: ``cluster.proc``)."""
    cluster, proc = job.split(".")
    heads = {
        0: "Job submitted from host: <10.0.0.1:9618>",
        1: "Job executing on host: <10.0.0.7:9618>",
        4: "Job was evicted.",
        5: "Job terminated.",
        6: "Image size of job updated: 1000",
        9: "Job was aborted.",
        12: "Job was held.",
        13: "Job was released.",
        28: "Job ad information event triggered.",
        40: "Started transferring input files",
    }
    stamp = "2026-12-02 15:00:00"
    return f"{code:03d} ({int(cluster)}.{int(proc):03d}.000) {stamp} {heads[code]}\n{body}...\n"


def terminated(job: str, code: int = 0, signal: int | None = None) -> str:
    if signal is not None:
        return event(
            5, job, f"\t(0) Abnormal termination (signal {signal})\n\t(0) No core file\n" + USAGE
        )
    return event(5, job, f"\t(1) Normal termination (return value {code})\n" + USAGE)


def held(job: str, reason: str, code: int, subcode: int = 0) -> str:
    return event(12, job, f"\t{reason}\n\tCode {code} Subcode {subcode}\n")


def evicted(job: str) -> str:
    return event(4, job, "\t(0) Job was not checkpointed.\n" + EVICTED_USAGE)


def aborted(job: str, reason: str) -> str:
    return event(9, job, f"\t{reason}\n")


class Timeout(htcondor2.HTCondorException):
    """What the bindings raise when a schedd does not answer in time."""


class FakeSchedd:
    """One schedd (see the module docstring)."""

    def __init__(self, name: str, clock: Any = time.time, removal_steps: int = 2) -> None:
        self.name = name
        self.clock = clock
        self.removal_steps = removal_steps
        self.owner = "calib"
        self.submitter: str | None = None  # the cluster ad's Owner (None: ``owner``)
        self.queue: dict[str, dict[str, Any]] = {}
        self.history: dict[str, dict[str, Any]] = {}
        self.received: list[str] = []  # submit texts as the schedd receives them
        self.constraints: list[str] = []
        self.calls: dict[str, int] = {"submit": 0, "query": 0, "act": 0}
        self.timeouts: dict[str, int] = {}  # how many of the next calls of a kind time out
        self.lost_answers = 0  # how many of the next submissions time out once done
        self.refuse_removal = False
        self.latency = 0.0  # seconds each call takes (two threads at once then overlap)
        self._clusters = itertools.count(100)
        self._logs: dict[str, Path] = {}
        self._removing: dict[str, int] = {}
        self._aborted: set[str] = set()  # abort events written, the ads not gone yet
        self._busy = threading.Lock()

    # --- what the bindings call ----------------------------------------------------------
    def submit(self, description: htcondor2.Submit, itemdata: Iterator[dict[str, str]]) -> Any:
        with self._call("submit"):
            text = _as_received(description, list(itemdata))
            self.received.append(text)
            items = list(htcondor2.Submit(text).itemdata() or [])  # as the schedd reads them
            for item in items:
                assert not self.live(Path(item["job_dir"])), "a second job in a live job's folder"
            cluster = next(self._clusters)
            log = Path(description["log"])
            for proc, item in enumerate(items):
                job = f"{cluster}.{proc}"
                tag = item["job_tag"].replace('\\"', '"').replace("\\\\", "\\")
                self.queue[job] = {
                    "ClusterId": cluster, "ProcId": proc, "Owner": self.owner, "JobStatus": 1,
                    "EnteredCurrentStatus": int(self.clock()), "NumJobStarts": 0,
                    "B2CalJobDir": tag, "Iwd": item["job_dir"],
                }  # fmt: skip
                self._logs[job] = log
                self._write(job, event(0, job))
            if self.lost_answers > 0:  # the cluster is queued, but its answer never arrives
                self.lost_answers -= 1
                raise Timeout("Failed to receive the schedd's reply: timed out")
            return _Result(cluster, self.submitter or self.owner)

    def query(self, constraint: str, projection: list[str]) -> list[classad2.ClassAd]:
        with self._call("query"):
            self.constraints.append(constraint)
            expression = classad2.ExprTree(constraint)
            found = []
            for ad in self.queue.values():
                if expression.eval(classad2.ClassAd(ad)) is True:
                    found.append(classad2.ClassAd({k: ad[k] for k in projection if k in ad}))
            return found

    def act(self, action: htcondor2.JobAction, job_spec: list[str], reason: Any = None) -> Any:
        with self._call("act"):
            assert action == htcondor2.JobAction.Remove
            text = reason[0] if isinstance(reason, tuple) else None  # as the bindings pass it
            result = {"TotalSuccess": 0, "TotalNotFound": 0, "TotalPermissionDenied": 0,
                      "TotalError": 0, "TotalBadStatus": 0}  # fmt: skip
            for job in job_spec:
                ad = self.queue.get(job)
                if ad is None:
                    result["TotalNotFound"] += 1
                elif self.refuse_removal:
                    result["TotalPermissionDenied"] += 1
                elif ad["JobStatus"] == 3:
                    result["TotalBadStatus"] += 1
                else:
                    ad.update(JobStatus=3, RemoveReason=text or "")
                    self._removing[job] = self.removal_steps
                    result["TotalSuccess"] += 1
            return classad2.ClassAd(result)

    # --- what the pool does --------------------------------------------------------------
    def start(self, job: str) -> None:
        ad = self.queue[job]
        ad.update(JobStatus=2, NumJobStarts=ad["NumJobStarts"] + 1, RemoteHost="slot1@node7",
                  LastMatchTime=int(self.clock()))  # fmt: skip
        self._write(job, event(1, job))

    def evict(self, job: str) -> None:
        self.queue[job].update(JobStatus=1, EnteredCurrentStatus=int(self.clock()))
        self._write(job, evicted(job))

    def finish(
        self, job: str, code: int = 0, signal: int | None = None, leave_in_queue: bool = False
    ) -> None:
        """The job ends and leaves the queue; with ``leave_in_queue`` (a job whose
        ``leave_in_queue`` expression holds) it stays there as completed (status 4) until
        :meth:`leave`."""
        self.queue[job].update(
            JobStatus=4, ExitCode=code, ExitBySignal=signal is not None, ExitSignal=signal
        )
        self._write(job, terminated(job, code, signal))
        if not leave_in_queue:
            self.leave(job)

    def hold(self, job: str, reason: str, code: int, subcode: int = 0) -> None:
        self.queue[job].update(
            JobStatus=5, HoldReason=reason, HoldReasonCode=code, HoldReasonSubCode=subcode
        )
        self._write(job, held(job, reason, code, subcode))

    def reject(self, job: str, reason: str, idle_since: float) -> None:
        """The negotiator did not match the job (the reason stays on its ad)."""
        self.queue[job].update(LastRejMatchReason=reason, EnteredCurrentStatus=int(idle_since))

    def match(self, job: str) -> None:
        """The negotiator matched the job to a slot (it may not start there, the claim lost)."""
        self.queue[job].update(LastMatchTime=int(self.clock()))

    def step(self) -> None:
        """Time passes: removed jobs whose starters are gone leave the queue."""
        for job in list(self._removing):
            self._removing[job] -= 1
            if self._removing[job] <= 0:
                del self._removing[job]
                if job not in self._aborted:
                    self.log_abort(job)
                self.leave(job)

    def log_abort(self, job: str) -> None:
        """The removed job's starter is gone and its abort event written; its ad is still in
        the queue (status 3) until :meth:`step` takes it out."""
        reason = self.queue[job].get("RemoveReason") or "via condor_rm"
        self._write(job, aborted(job, reason))
        self._aborted.add(job)

    def leave(self, job: str) -> None:
        self.history[job] = self.queue.pop(job)

    def live(self, folder: Path) -> list[str]:
        """Jobs of ``folder`` that may be running (in the queue, not completed)."""
        return [
            job
            for job, ad in self.queue.items()
            if ad.get("B2CalJobDir") == str(folder)
            and ad["JobStatus"] != 4
            and job not in self._aborted
        ]

    def _write(self, job: str, text: str) -> None:
        with self._logs[job].open("a") as stream:
            stream.write(text)

    def _call(self, what: str) -> Any:
        schedd = self

        class Call:
            def __enter__(self) -> None:
                assert schedd._busy.acquire(blocking=False), "two threads call the schedd at once"
                time.sleep(schedd.latency)
                schedd.calls[what] += 1
                if schedd.timeouts.get(what, 0) > 0:
                    schedd.timeouts[what] -= 1
                    schedd._busy.release()
                    raise Timeout("Failed to connect to schedd: timed out")

            def __exit__(self, *exc: object) -> None:
                schedd._busy.release()

        return Call()


class FakePool:
    """Schedds by name, and the collector that locates them (the backend's ``connect``)."""

    def __init__(self, *names: str, clock: Any = time.time, removal_steps: int = 2) -> None:
        self.schedds = {n: FakeSchedd(n, clock, removal_steps) for n in names}
        self.local = names[0]
        self.connects = 0

    def connect(self, name: str | None, pool: str | None) -> tuple[str, FakeSchedd]:
        self.connects += 1
        found = self.schedds.get(name or self.local)
        if found is None:
            raise B2CalError(f"no HTCondor schedd named {name!r}")
        return found.name, found


class _Result:
    def __init__(self, cluster: int, owner: str) -> None:
        self._cluster = cluster
        self._owner = owner

    def cluster(self) -> int:
        return self._cluster

    def clusterad(self) -> classad2.ClassAd:
        return classad2.ClassAd({"ClusterId": self._cluster, "Owner": self._owner})


def _as_received(description: htcondor2.Submit, items: list[dict[str, str]]) -> str:
    """The submit text with its queue statement and item data, as ``Schedd.submit`` sends
    it (items separated by the unit separator)."""
    lines = "".join(f"{key} = {value}\n" for key, value in description.items())
    keys = list(items[0])
    rows = "".join("\x1f".join(item[k] for k in keys) + "\n" for item in items)
    return f"{lines}\nQUEUE {','.join(keys)} FROM (\n{rows})\n"
