"""What a job's ad in the queue says of it, in b2cal's states and words.

A job in the queue has not ended until HTCondor says it completed: a removed job (status 3)
may still run on its node until its starter is gone, and a held one may still be leaving its
slot, so neither is finished here (:mod:`b2cal.backends.htcondor.backend` waits for them to
leave the queue). Some jobs never end by themselves: held for a failure, idle with no slot
that matches them, or evicted and started again and again; their :class:`Verdict` says to
remove them, with the reason the job then fails with.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from b2cal.backends.base import JobReport, JobState

#: What a job ad says, as asked for in every query.
PROJECTION = [
    "ClusterId", "ProcId", "Owner", "JobStatus", "EnteredCurrentStatus", "NumJobStarts",
    "LastMatchTime", "LastRejMatchReason", "HoldReason", "HoldReasonCode", "HoldReasonSubCode",
    "RemoveReason", "ExitCode", "ExitBySignal", "ExitSignal", "RemoteHost", "LastRemoteHost",
    "B2CalJobDir",
]  # fmt: skip
#: HTCondor's JobStatus values.
IDLE, RUNNING, REMOVED, COMPLETED, HELD, TRANSFERRING_OUTPUT, SUSPENDED = range(1, 8)

#: Negotiator reasons that say the pool is busy, not that no slot could ever run the job.
BUSY_POOL = ("insufficient priority", "submitter limit", "group quota")

#: Holds that are not failures (HoldReasonCode): a person's ``condor_hold``, a job submitted
#: on hold, input being spooled. The job goes on once released.
WAITING_HOLDS = {1: "held by a person (condor_release lets it go on)", 15: "submitted on hold",
                 16: "its input is being spooled"}  # fmt: skip
#: Holds whose reason b2cal says in words (HoldReasonCode); the pool's own text follows.
HOLD_WORDS = {
    34: "it used more memory or disk than it asked for",
    46: "it ran past its wall time",
    47: "it ran past its wall time",
    21: "its execute node held it",
    26: "the pool's policy held it",
    3: "the job's policy held it",
    12: "its output could not be written",
    13: "its input could not be read",
    14: "its folder could not be entered (is it on the execute node's filesystem?)",
    22: "its event log could not be opened",
}


@dataclass(frozen=True)
class Patience:
    """How long a site lets a job wait or restart before it is failed."""

    idle_limit_seconds: float = 720 * 60
    max_starts: int = 3


@dataclass(frozen=True)
class Verdict:
    """A job's state from its ad; ``remove``: it will never end by itself and b2cal removes it
    (``report`` is then why it fails once it has left the queue)."""

    report: JobReport
    remove: bool = False


def judge(ad: Mapping[str, Any], now: float, patience: Patience) -> Verdict:
    """A queued job's state (see the module docstring)."""
    status = int(ad.get("JobStatus", IDLE))
    on = _host(ad)
    if status == IDLE:
        return _idle(ad, now, patience)
    if status in (RUNNING, TRANSFERRING_OUTPUT, SUSPENDED):
        return Verdict(JobReport(JobState.RUNNING))
    if status == REMOVED:
        why = ad.get("RemoveReason") or "no reason given"
        return Verdict(JobReport(JobState.RUNNING, f"being removed ({why})"))
    if status == HELD:
        return _held(ad, on)
    return Verdict(report_from_ad(ad))


def report_from_ad(ad: Mapping[str, Any]) -> JobReport:
    """How a completed job ended, from its ad."""
    on = _host(ad)
    if ad.get("ExitBySignal"):
        return JobReport(JobState.FAILED, f"killed by signal {ad.get('ExitSignal')}{on}")
    code = int(ad.get("ExitCode", 0) or 0)
    if code:
        return JobReport(JobState.FAILED, f"exit status {code}{on}")
    return JobReport(JobState.DONE)


def hold_words(reason: str, code: int | None, subcode: int | None) -> str:
    """A hold's reason as reported: b2cal's words for known codes, then HTCondor's."""
    said = reason or "no reason given"
    numbers = f"code {code}" + (f".{subcode}" if subcode else "") if code is not None else ""
    known = HOLD_WORDS.get(code) if code is not None else None
    if code == 34 and "memory" in said.lower():
        known = "it ran out of memory"
    head = f"{known}: held" if known else "held"
    return f"{head} ({numbers}): {said}" if numbers else f"{head}: {said}"


def _idle(ad: Mapping[str, Any], now: float, patience: Patience) -> Verdict:
    starts = int(ad.get("NumJobStarts", 0) or 0)
    if starts > patience.max_starts:
        where = _host(ad)
        return Verdict(
            JobReport(
                JobState.FAILED,
                f"it was started {starts} times and evicted each time (last{where}): the site "
                f"allows {patience.max_starts} starts",
            ),
            remove=True,
        )
    rejected = str(ad.get("LastRejMatchReason") or "")
    since = float(ad.get("EnteredCurrentStatus", now) or now)
    idle = now - since
    # LastRejMatchReason stays once the job failed to match at some point, and a full pool
    # says "no match found" too: only a job that never matched nor started, and was not merely
    # short of priority or quota, counts as one no slot can run
    never = starts == 0 and not ad.get("LastMatchTime")
    busy = any(words in rejected.lower() for words in BUSY_POOL)
    if rejected and never and not busy and idle > patience.idle_limit_seconds:
        return Verdict(
            JobReport(
                JobState.FAILED,
                f"no slot of the pool matched it for {idle / 60:.0f} min (negotiator: "
                f"{rejected}): check its requirements and FileSystemDomain",
            ),
            remove=True,
        )
    return Verdict(JobReport(JobState.PENDING, rejected and f"idle: {rejected}"))


def _held(ad: Mapping[str, Any], on: str) -> Verdict:
    code = _number(ad.get("HoldReasonCode"))
    subcode = _number(ad.get("HoldReasonSubCode"))
    reason = str(ad.get("HoldReason") or "")
    if code in WAITING_HOLDS:
        return Verdict(JobReport(JobState.PENDING, f"{WAITING_HOLDS[code]}: {reason}"))
    words = hold_words(reason, code, subcode)
    return Verdict(JobReport(JobState.FAILED, f"{words}{on}"), remove=True)


def _host(ad: Mapping[str, Any]) -> str:
    host = ad.get("RemoteHost") or ad.get("LastRemoteHost") or ""
    return f" on {str(host).split('@')[-1]}" if host else ""


def _number(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None
