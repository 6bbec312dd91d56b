"""The backend interface: where jobs run.

A backend is handed :class:`Job` s — a Python function named by ``"module:function"``, to be
called with a job folder — and reports their states. It knows nothing of what a job does: the
job reads its inputs from its folder and writes its outputs there, so a backend only has to
start the work (a warm local process, a batch job running ``python -m b2cal.backends.launch``)
and say how it ended. Local processes now; Slurm, HTCondor and Dask implement the same calls
(submit many at once, poll in bulk, cancel), like coffea's executors.
"""

from __future__ import annotations

import enum
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self


class JobState(enum.StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    DONE = "DONE"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def finished(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class Job:
    """One unit of work: ``target`` (``"module:function"``) called with ``directory``.

    The function returns 0 when the job succeeded; anything else, or an exception, is a
    failure. ``name`` labels the job in batch queues and messages.
    """

    name: str
    directory: Path
    target: str

    def argv(self, python: str = sys.executable) -> list[str]:
        """The command line that runs the job in a fresh process (what a batch job executes)."""
        return [python, "-m", "b2cal.backends.launch", self.target, str(self.directory)]


@dataclass(frozen=True)
class JobHandle:
    """A submitted job: the backend's id for it, and the job."""

    job_id: str
    job: Job


@dataclass(frozen=True)
class JobReport:
    """A job's state and, when it failed, what the backend knows of why (exit code, signal)."""

    state: JobState
    reason: str = ""


class Backend(ABC):
    """Runs jobs. Implementations must be safe to call from several threads.

    ``retries`` (more attempts of a failed job) and ``poll_seconds`` (how often the caller
    asks for states) belong to the backend, not to its callers: a batch system must not be
    polled every half second, a local pool may be.
    """

    name: str = "backend"
    retries: int = 1
    poll_seconds: float = 0.5

    @abstractmethod
    def submit(self, jobs: Sequence[Job]) -> list[JobHandle]:
        """Start every job (one submission for all of them where the system allows it)."""

    @abstractmethod
    def poll(self, handles: Sequence[JobHandle]) -> dict[str, JobReport]:
        """The state of every handle, by job id, in one query."""

    @abstractmethod
    def cancel(self, handles: Sequence[JobHandle]) -> None:
        """Stop the given jobs; finished ones are left as they are."""

    def preload(self, targets: Sequence[str]) -> None:  # noqa: B027 - a hint, may be ignored
        """Jobs calling ``targets`` will come: a backend with warm workers imports them now."""

    def wait(self, handles: Sequence[JobHandle], timeout: float) -> None:
        """Block until one of ``handles`` may have changed state, at most ``timeout`` seconds.

        The default just sleeps; backends that can be told when a job ends (the local pool)
        return as soon as it does, so short jobs are not held back by a polling interval.
        """
        time.sleep(timeout)

    def close(self) -> None:  # noqa: B027 - most backends hold nothing to release
        """Release the backend's resources (worker processes, connections)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
