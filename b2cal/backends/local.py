"""The local backend: jobs in a pool of worker processes on this machine.

The default for laptops, tests and the demo. Each worker is a fresh interpreter
(:mod:`b2cal.backends.local_worker`: it never inherits the caller's threads or locks, nor
imports the caller's ``__main__`` as ``multiprocessing``'s spawn does) that imports what jobs
need once and then runs job after job, which keeps the per-job overhead small. The pool is
b2cal's own rather than ``concurrent.futures``' because of what must happen when things go
wrong:

* a worker that dies (killed, out of memory) fails only the job it was running; a new worker
  takes its place and the other jobs go on;
* cancelling a running job kills its worker at once, so Ctrl-C or SIGTERM of the driver
  stops within a second instead of waiting for jobs to end;
* workers ignore SIGINT (the driver decides what a Ctrl-C stops) and watch their parent: if
  the driver dies without cleaning up (SIGKILL), every worker exits within a second, so no
  process of a run outlives it;
* workers run at a lower priority than their driver, so orchestration stays prompt while
  every core computes.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import wait as wait_for
from typing import Any

from b2cal.backends.base import Backend, Job, JobHandle, JobReport, JobState, Limits
from b2cal.errors import B2CalError
from b2cal.sites import BackendSettings

#: How much lower than its driver a worker runs: with every core busy with collector jobs,
#: the driver (and a flow's orchestration) gets the CPU for its short work first, and the
#: jobs lose nothing (the driver needs little CPU).
WORKER_NICENESS = 10
#: How long a worker has to exit after being asked to, before it is killed.
_EXIT_GRACE_SECONDS = 2.0


# --- in the driver ------------------------------------------------------------------------------
def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


class _Worker:
    """A worker process (:mod:`b2cal.backends.local_worker`) and the connection to it; the
    connection closing says the process ended."""

    def __init__(self, targets: list[str], niceness: int) -> None:
        self.conn, child = multiprocessing.Pipe()
        command = [sys.executable, "-m", "b2cal.backends.local_worker"]
        self.process = subprocess.Popen(
            [*command, str(child.fileno()), str(os.getpid()), str(niceness)],
            pass_fds=[child.fileno()],
            stdin=subprocess.DEVNULL,
        )
        child.close()
        self.conn.send(("path", list(sys.path)))
        self.conn.send(("preload", targets))
        self.job: str | None = None

    def alive(self) -> bool:
        return self.process.poll() is None

    def join(self, timeout: float | None = None) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout)


@dataclass
class _Entry:
    handle: JobHandle
    report: JobReport


class LocalBackend(Backend):
    """Runs jobs in ``workers`` local processes (default: one per core), started at once, at
    ``niceness`` below the driver."""

    name = "local"

    def __init__(
        self,
        workers: int | None = None,
        *,
        retries: int = 1,
        poll_seconds: float = 0.5,
        job_limit: int | None = None,
        niceness: int = WORKER_NICENESS,
    ) -> None:
        count = workers if workers is not None else (os.cpu_count() or 1)
        if count < 1:
            raise B2CalError(f"the number of workers must be at least 1, got {count}")
        super().__init__(Limits(retries=retries, poll_seconds=poll_seconds, job_limit=job_limit))
        self.workers = count
        self._niceness = niceness
        self._lock = threading.Condition()
        self._entries: dict[str, _Entry] = {}
        self._queue: deque[str] = deque()
        self._targets: list[str] = []
        self._counter = 0
        self._closed = False
        self._broken = ""  # why the dispatcher stopped, if it failed
        self._wake_read, self._wake_write = os.pipe()
        self._pool = [self._start_worker() for _ in range(count)]
        self._dispatcher = threading.Thread(
            target=self._dispatch, name="local-backend", daemon=True
        )
        self._dispatcher.start()
        # Closed before the interpreter ends even if the owner forgot to: otherwise
        # multiprocessing's own exit hook kills the workers, the dispatcher starts their
        # replacements and the exiting interpreter leaves them half-spawned (a traceback each).
        atexit.register(self.close)

    # --- the interface ---------------------------------------------------------------------
    def preload(self, targets: Sequence[str]) -> None:
        with self._lock:
            new = [t for t in targets if t not in self._targets]
            self._targets.extend(new)
            for worker in self._pool:
                self._send(worker, ("preload", new))

    def submit(self, jobs: Sequence[Job]) -> list[JobHandle]:
        handles = []
        with self._lock:
            if self._closed or self._broken:
                raise B2CalError(f"the local backend is {self._broken or 'closed'}")
            for job in jobs:
                self._counter += 1
                handle = JobHandle(f"local-{self._counter}", job)
                self._entries[handle.job_id] = _Entry(handle, JobReport(JobState.PENDING))
                self._queue.append(handle.job_id)
                handles.append(handle)
            self._wake()
        return handles

    def poll(self, handles: Sequence[JobHandle]) -> dict[str, JobReport]:
        with self._lock:
            return {h.job_id: self._entries[h.job_id].report for h in handles}

    def wait(self, handles: Sequence[JobHandle], timeout: float) -> None:
        with self._lock:
            if all(self._entries[h.job_id].report.state.finished for h in handles):
                return
            self._lock.wait(timeout)

    def cancel(self, handles: Sequence[JobHandle]) -> None:
        with self._lock:
            for handle in handles:
                entry = self._entries[handle.job_id]
                if entry.report.state.finished:
                    continue
                if entry.report.state is JobState.RUNNING:
                    for worker in self._pool:
                        if worker.job == handle.job_id:
                            worker.process.kill()  # its connection closes; it is replaced
                entry.report = JobReport(JobState.CANCELLED, "cancelled")
            self._lock.notify_all()

    def close(self) -> None:
        """Stop every worker: idle ones are asked to exit, busy ones are killed."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            atexit.unregister(self.close)
            for entry in self._entries.values():
                if not entry.report.state.finished:
                    entry.report = JobReport(JobState.CANCELLED, "the backend was closed")
            self._lock.notify_all()
            os.write(self._wake_write, b"x")
        self._dispatcher.join()
        for worker in self._pool:
            if worker.job is not None:
                worker.process.kill()
            else:
                self._send(worker, None)
        deadline = time.monotonic() + _EXIT_GRACE_SECONDS
        for worker in self._pool:
            worker.join(max(0.0, deadline - time.monotonic()))
            if worker.alive():
                worker.process.kill()
                worker.join()
            worker.conn.close()
        os.close(self._wake_read)
        os.close(self._wake_write)

    # --- the dispatcher thread -------------------------------------------------------------
    def _wake(self) -> None:
        """Wake the dispatcher (called with the lock held, so the pipe is still open)."""
        if not self._closed:
            with contextlib.suppress(OSError):
                os.write(self._wake_write, b"x")

    @staticmethod
    def _send(worker: _Worker, message: Any) -> bool:
        try:
            worker.conn.send(message)
        except (OSError, ValueError):  # the worker died; its sentinel says so
            return False
        return True

    def _assign(self) -> None:
        """Give queued jobs to idle workers (called with the lock held)."""
        idle = [w for w in self._pool if w.job is None and w.alive()]
        while self._queue and idle:
            job_id = self._queue.popleft()
            entry = self._entries[job_id]
            if entry.report.state is not JobState.PENDING:
                continue
            worker = idle.pop()
            job = entry.handle.job
            if not self._send(worker, ("job", job_id, job.target, str(job.directory))):
                self._queue.appendleft(job_id)
                continue
            worker.job = job_id
            entry.report = JobReport(JobState.RUNNING)

    def _dispatch(self) -> None:
        """The dispatcher thread; if it fails, every unfinished job fails with the reason (a
        caller waiting for jobs must never wait forever)."""
        try:
            self._dispatch_loop()
        except Exception as exc:
            with self._lock:
                self._broken = f"broken ({type(exc).__name__}: {exc})"
                for entry in self._entries.values():
                    if not entry.report.state.finished:
                        reason = f"the local backend failed: {type(exc).__name__}: {exc}"
                        entry.report = JobReport(JobState.FAILED, reason)
                self._lock.notify_all()

    def _dispatch_loop(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
                self._assign()
                waitables: list[Any] = [self._wake_read]
                waitables.extend(worker.conn for worker in self._pool)
            ready = wait_for(waitables, timeout=1.0)
            with self._lock:
                if self._closed:
                    return
                if self._wake_read in ready:
                    os.read(self._wake_read, 4096)
                for worker in list(self._pool):
                    if worker.conn in ready and not self._receive(worker):
                        self._replace(worker)
                self._lock.notify_all()

    def _receive(self, worker: _Worker) -> bool:
        """The worker's reply; False if its connection closed: it died."""
        try:
            job_id, ok, reason = worker.conn.recv()
        except (EOFError, OSError):
            return False
        entry = self._entries[job_id]
        if entry.report.state is JobState.RUNNING:
            entry.report = JobReport(JobState.DONE if ok else JobState.FAILED, reason)
        worker.job = None
        return True

    def _replace(self, worker: _Worker) -> None:
        """A worker died: fail the job it was running (only that one) and start another."""
        worker.join(_EXIT_GRACE_SECONDS)
        if worker.alive():  # it closed its connection but lingers: it is no worker of ours
            worker.process.kill()
            worker.join()
        if worker.job is not None:
            entry = self._entries[worker.job]
            if entry.report.state is JobState.RUNNING:
                reason = (
                    f"the worker process died ({_exit_text(worker.process.returncode)}; "
                    "killed or out of memory?)"
                )
                entry.report = JobReport(JobState.FAILED, reason)
        worker.conn.close()
        self._pool.remove(worker)
        if not self._closed:
            self._pool.append(self._start_worker())

    def _start_worker(self) -> _Worker:
        return _Worker(list(self._targets), self._niceness)


def open_local(settings: BackendSettings) -> LocalBackend:
    """The local backend as a site configures it (``[backend] workers``, ``retries``, ...)."""
    return LocalBackend(
        settings.workers,
        retries=settings.retries,
        poll_seconds=settings.poll_seconds or 0.5,
        job_limit=settings.job_limit,
    )  # resources and shared roots mean nothing to processes of this machine
