"""Job event logs: how jobs that left the queue ended.

Each cluster writes its events to ``.htcondor/events@<schedd>@<number>.log`` beside its job
folders (the schedd's name in the file name: cluster ids are unique per schedd only). A log is
read with ``htcondor2.JobEventLog`` from where the last read stopped, so a long collection
does not read its logs from the start at every poll; an event still being written (or cut
off for good, a full disk) is simply not read yet, and a log that cannot be parsed past some
point keeps what was read before it. A log is read again only once it has grown: the bindings
wait a second on an event cut off before giving up for now.
"""

from __future__ import annotations

import logging
import pickle
import re
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from b2cal.backends.base import JobReport, JobState
from b2cal.backends.htcondor.states import hold_words

log = logging.getLogger("b2cal.backends")


def log_name(schedd: str, number: str) -> str:
    """The event log file of one submission to ``schedd``."""
    return f"events@{_slug(schedd)}@{number}.log"


class EventLogReader:
    """One event log, read on from where it stopped: the last state-telling event of each job
    by ``cluster.proc``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._resume: bytes | None = None  # the reader after the last whole event, pickled
        self._reader: Any = None
        self._found: dict[str, JobReport] = {}
        self._warned = False
        self._size = -1  # of the file when last read

    def read(self) -> dict[str, JobReport]:
        import htcondor2

        try:
            size = self.path.stat().st_size
        except OSError:
            return dict(self._found)  # not written yet
        if size == self._size:
            return dict(self._found)  # nothing new (the bindings wait a second on a cut event)
        self._size = size
        try:
            if self._reader is None:
                if self._resume is not None:
                    self._reader = pickle.loads(self._resume)
                else:
                    self._reader = htcondor2.JobEventLog(str(self.path))
            for event in self._reader.events(stop_after=0):
                self._apply(event, htcondor2.JobEventType)
                self._resume = pickle.dumps(self._reader)
        except htcondor2.HTCondorException as exc:
            self._reader = None  # read on from the last whole event next time
            if not self._warned:
                log.warning("htcondor: job event log %s cannot be read on: %s", self.path, exc)
                self._warned = True
        return dict(self._found)

    def _apply(self, event: Any, kinds: Any) -> None:
        job_id = f"{event.cluster}.{event.proc}"
        kind = event.type
        if kind == kinds.SUBMIT:
            self._found[job_id] = JobReport(JobState.PENDING)
        elif kind == kinds.EXECUTE:
            self._found[job_id] = JobReport(JobState.RUNNING)
        elif kind in (kinds.JOB_EVICTED, kinds.JOB_RELEASED):
            self._found[job_id] = JobReport(JobState.PENDING)
        elif kind == kinds.JOB_HELD:  # not an end: the job leaves the queue only once removed
            words = hold_words(
                str(event.get("HoldReason", "")),
                _int(event.get("HoldReasonCode")),
                _int(event.get("HoldReasonSubCode")),
            )
            self._found[job_id] = JobReport(JobState.PENDING, words)
        elif kind == kinds.JOB_TERMINATED:
            self._found[job_id] = _terminated(event)
        elif kind == kinds.JOB_ABORTED:
            reason = event.get("Reason") or "no reason given"
            self._found[job_id] = JobReport(
                JobState.CANCELLED, f"removed from the queue ({reason})"
            )


class EventLogs:
    """The event logs of every submission this backend follows, each read on from where it
    stopped (safe from several threads)."""

    def __init__(self) -> None:
        self._readers: dict[Path, EventLogReader] = {}
        self._lock = threading.Lock()

    def reports(self, folders: Iterable[Path], schedd: str, legacy: bool) -> dict[str, JobReport]:
        """What the logs of ``schedd``'s clusters in ``folders`` say, by ``cluster.proc``;
        ``legacy``: also the logs written before they were named after their schedd."""
        found: dict[str, JobReport] = {}
        with self._lock:
            for folder in sorted(set(folders)):
                paths = sorted(folder.glob(log_name(schedd, "*")))
                if legacy:
                    paths += sorted(folder.glob("events-*.log"))
                for path in paths:
                    reader = self._readers.setdefault(path, EventLogReader(path))
                    found.update(reader.read())
        return found


def reports_from_event_log(path: Path) -> dict[str, JobReport]:
    """What one event log says of each job (read from its start)."""
    return EventLogReader(path).read()


def _terminated(event: Any) -> JobReport:
    if event.get("TerminatedNormally"):
        code = int(event.get("ReturnValue", 0))
        return (
            JobReport(JobState.DONE)
            if code == 0
            else JobReport(JobState.FAILED, f"exit status {code}")
        )
    return JobReport(JobState.FAILED, f"killed by signal {event.get('TerminatedBySignal')}")


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "local"
