"""The backend interface: where collector jobs run.

A backend runs *collector jobs*: each is a directory holding ``spec.json`` and is executed by
``python -m b2cal.caf.collection <job dir>``, which writes ``output.pkl`` and ``status.json``
there. Because the job's inputs and outputs are files, a backend only has to start commands
and report their state: local processes now; Slurm, HTCondor and Dask implement the same calls
(submit many at once, poll in bulk, cancel, logs), like coffea's executors.
"""

from __future__ import annotations

import enum
import json
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
class JobHandle:
    """A submitted job: the backend's id for it and the job directory."""

    job_id: str
    directory: Path


class Backend(ABC):
    """Runs collector jobs. Implementations must be safe to call from several threads."""

    name: str = "backend"

    @abstractmethod
    def submit(self, job_dirs: Sequence[Path]) -> list[JobHandle]:
        """Start every job (one submission for all of them where the system allows it)."""

    @abstractmethod
    def poll(self, handles: Sequence[JobHandle]) -> dict[str, JobState]:
        """The state of every handle, by job id, in one query."""

    @abstractmethod
    def cancel(self, handles: Sequence[JobHandle]) -> None:
        """Stop the given jobs; finished ones are left as they are."""

    def logs(self, handle: JobHandle) -> str:
        """What the job wrote to its log (the job writes ``job.log`` in its directory)."""
        path = handle.directory / "job.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait(self, handles: Sequence[JobHandle], timeout: float) -> None:
        """Block until one of ``handles`` may have changed state, at most ``timeout`` seconds.

        The default just sleeps; backends that can be told when a job ends (the local pool)
        return as soon as it does, so short jobs are not held back by a polling interval.
        """
        time.sleep(timeout)

    def error(self, handle: JobHandle) -> str:
        """Why a failed job failed, in one line: the error the job recorded, if any."""
        path = handle.directory / "status.json"
        if path.exists():
            doc = json.loads(path.read_text())
            if doc.get("state") == "failed":
                return str(doc.get("error", ""))
        return ""

    def close(self) -> None:  # noqa: B027 - most backends hold nothing to release
        """Release the backend's resources (worker processes, connections)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
