"""The local backend: collector jobs in a pool of worker processes on this machine.

The default for laptops, tests and the demo. Workers are started with ``spawn`` so they never
inherit the caller's threads or locks (the progress display runs a thread), and each worker
imports b2cal once and then runs many jobs, which keeps the per-job overhead small.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Sequence
from concurrent import futures
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from b2cal.backends.base import Backend, JobHandle, JobState
from b2cal.caf.collection import JobStatus, run_collector_job
from b2cal.errors import B2CalError


def _warm_up() -> None:
    """Import what collector jobs need, once per worker, before the first job arrives."""
    import uproot  # noqa: F401

    import b2cal.caf.collection  # noqa: F401


def _run(job_dir: str) -> str:
    status: JobStatus = run_collector_job(Path(job_dir))
    return status.state


class LocalBackend(Backend):
    """Runs jobs in up to ``workers`` local processes."""

    name = "local"

    def __init__(self, workers: int | None = None) -> None:
        count = workers if workers is not None else (os.cpu_count() or 1)
        if count < 1:
            raise B2CalError(f"the number of workers must be at least 1, got {count}")
        self.workers = count
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        self._futures: dict[str, Future[str]] = {}
        self._counter = 0

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=context)
            for _ in range(self.workers):  # start every worker now, while the caller plans
                self._pool.submit(_warm_up)
        return self._pool

    def start(self) -> None:
        """Start the worker processes ahead of the first job (they take ~1 s to import)."""
        with self._lock:
            self._executor()

    def submit(self, job_dirs: Sequence[Path]) -> list[JobHandle]:
        handles = []
        with self._lock:
            for job_dir in job_dirs:
                self._counter += 1
                handle = JobHandle(f"local-{self._counter}", Path(job_dir))
                try:
                    future = self._executor().submit(_run, str(job_dir))
                except BrokenProcessPool:
                    # A worker died (killed, out of memory): start a fresh pool for new jobs.
                    if self._pool is not None:
                        self._pool.shutdown(wait=False, cancel_futures=True)
                    self._pool = None
                    future = self._executor().submit(_run, str(job_dir))
                self._futures[handle.job_id] = future
                handles.append(handle)
        return handles

    def poll(self, handles: Sequence[JobHandle]) -> dict[str, JobState]:
        with self._lock:
            return {h.job_id: self._state(self._futures[h.job_id]) for h in handles}

    @staticmethod
    def _state(future: Future[str]) -> JobState:
        if future.cancelled():
            return JobState.CANCELLED
        if not future.done():
            return JobState.RUNNING if future.running() else JobState.PENDING
        if future.exception() is not None:
            return JobState.FAILED
        return JobState.DONE if future.result() == "done" else JobState.FAILED

    def wait(self, handles: Sequence[JobHandle], timeout: float) -> None:
        with self._lock:
            pending = [self._futures[h.job_id] for h in handles]
        pending = [f for f in pending if not f.done()]
        if pending:
            futures.wait(pending, timeout=timeout, return_when=futures.FIRST_COMPLETED)

    def cancel(self, handles: Sequence[JobHandle]) -> None:
        with self._lock:
            for handle in handles:
                self._futures[handle.job_id].cancel()

    def error(self, handle: JobHandle) -> str:
        future = self._futures[handle.job_id]
        finished = future.done() and not future.cancelled()
        if finished and isinstance(future.exception(), BrokenProcessPool):
            return "the worker process died (killed or out of memory)"
        return super().error(handle)

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None
