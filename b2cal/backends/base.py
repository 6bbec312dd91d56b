"""The backend interface: where jobs run.

A backend is handed :class:`Job` s — a Python function named by ``"module:function"``, to be
called with a job folder, and the resources the job asks for — and reports their states. It
knows nothing of what a job does: the job reads its inputs from its folder and writes its
outputs there, so a backend only has to start the work (a warm local process, a batch job
running ``python -m b2cal.backends.launch``) and say how it ended. Local processes, Slurm,
HTCondor and Dask implement the same calls (submit many at once, poll in bulk, cancel), like
coffea's executors; a site names its backend, and :func:`b2cal.backends.registry.open_backend`
opens it from the site's settings.

What belongs to the backend and its site, not to its callers: how many more attempts a failed
job gets (``retries``), how often states are asked for (``poll_seconds``), how many jobs may be
queued and running at once (``slots``), where job folders must be (``shared_roots``: batch
nodes see only the shared filesystem), and whether jobs outlive the process that submitted
them (``reattach``: a restarted driver then picks them up by their recorded ids instead of
submitting them again).
"""

from __future__ import annotations

import enum
import os
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from b2cal.errors import B2CalError
from b2cal.sites import BackendSettings, JobResources


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
    resources: JobResources = field(default_factory=JobResources)

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


class JobSlots:
    """How many more jobs may be handed to a backend now: at most ``limit`` queued and running
    at once, over every caller of the backend in this process (None: no limit). Callers take
    slots before they submit and give them back as jobs end; arrays are split to fit."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self._used = 0
        self._changed = threading.Condition()

    def take(self, wanted: int, at_least: int = 1) -> int:
        """Up to ``wanted`` slots, as many as are free now, if that is ``at_least`` of them
        (or all that are wanted); else none."""
        with self._changed:
            free = wanted if self.limit is None else max(0, min(wanted, self.limit - self._used))
            if free < min(at_least, wanted):
                return 0
            self._used += free
            return free

    def hold(self, count: int) -> None:
        """Count ``count`` jobs that are queued already (re-attached), whatever the limit."""
        with self._changed:
            self._used += count

    def give(self, count: int) -> None:
        with self._changed:
            self._used = max(0, self._used - count)
            self._changed.notify_all()

    def wait(self, timeout: float) -> None:
        """Until some slot is given back, at most ``timeout`` seconds."""
        with self._changed:
            self._changed.wait(timeout)

    @property
    def used(self) -> int:
        with self._changed:
            return self._used


@dataclass(frozen=True)
class Limits:
    """What a site sets for its backend, whichever it is: more attempts of a failed job, how
    often states are asked for, the job limit, where job folders must be, what a job asks
    for."""

    retries: int = 1
    poll_seconds: float = 0.5
    job_limit: int | None = None
    shared_roots: tuple[Path, ...] = ()
    resources: JobResources = field(default_factory=JobResources)

    @classmethod
    def of(cls, settings: BackendSettings, poll_seconds: float) -> Limits:
        """A site's limits; ``poll_seconds`` is the backend's default interval."""
        return cls(
            retries=settings.retries,
            poll_seconds=settings.poll_seconds or poll_seconds,
            job_limit=settings.job_limit,
            shared_roots=tuple(settings.shared_roots),
            resources=settings.resources,
        )


class Backend(ABC):
    """Runs jobs. Implementations must be safe to call from several threads.

    ``retries`` (more attempts of a failed job), ``poll_seconds`` (how often the caller asks for
    states), ``slots`` (the job limit) and ``shared_roots`` belong to the backend and its site
    (:class:`Limits`), not to its callers: a batch system must not be polled every half second,
    a local pool may be.
    """

    name: str = "backend"
    #: Jobs outlive the driver that submitted them (batch systems): :meth:`attach` finds them.
    reattach: bool = False

    def __init__(self, limits: Limits | None = None) -> None:
        chosen = limits or Limits()
        self.retries = chosen.retries
        self.poll_seconds = chosen.poll_seconds
        self.slots = JobSlots(chosen.job_limit)
        self.shared_roots = list(chosen.shared_roots)
        #: What a job asks for unless its calibration says other (the site's defaults).
        self.resources = chosen.resources

    def check_folders(self, jobs: Sequence[Job]) -> None:
        """Refuse jobs whose folders batch nodes would not see (outside ``shared_roots``)."""
        if not self.shared_roots:
            return
        roots = [root.resolve() for root in self.shared_roots]
        outside = [
            job
            for job in jobs
            if not any(job.directory.resolve().is_relative_to(root) for root in roots)
        ]
        if outside:
            raise B2CalError(
                f"collector job folder {outside[0].directory} is not on the shared filesystem "
                f"of the {self.name} backend ({', '.join(map(str, self.shared_roots))}): batch "
                "nodes could not read or write it; put the work root or output under one of them"
            )

    def attach(self, recorded: Sequence[tuple[Job, str]]) -> list[JobHandle]:
        """The jobs among ``recorded`` (each with the id it was submitted under) that the
        backend still holds — queued, running, or ended and not yet polled — as handles, for
        a driver restarted after they were submitted. A backend whose jobs die with their
        driver holds none."""
        return []

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


def submission_folder(jobs: Sequence[Job], backend: str) -> Path:
    """Where a batch backend keeps what one submission of ``jobs`` needs (job lists, scripts,
    event logs): ``.<backend>/`` in the folder that holds their folders, on the shared
    filesystem with them."""
    parents = sorted({job.directory.parent for job in jobs})
    base = parents[0] if len(parents) == 1 else Path(os.path.commonpath(parents))
    folder = base / f".{backend}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder
