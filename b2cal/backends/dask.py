"""The Dask backend: collector jobs as tasks of a ``distributed`` cluster.

Three ways to have the cluster, by ``[backend.options]``:

* ``scheduler = "tcp://host:8786"``: a running cluster the site keeps;
* ``cluster = "slurm"``: a ``dask-jobqueue`` ``SLURMCluster`` that b2cal starts for the run —
  ``jobs`` Slurm jobs of one worker each, asking for the site's ``[backend.resources]`` — and
  stops at its end;
* neither: a ``LocalCluster`` of ``[backend] workers`` processes on this machine.

Each job is a task that calls the job's function on its folder in a worker process (one
``Client.map`` per submission); as with every backend, the outputs are files in the job
folders, never task results, so nothing large travels through the scheduler. Jobs die with
the driver that owns the client (a cluster b2cal started stops with it), so a restarted driver
runs the unfinished ones again.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from b2cal.backends.base import Backend, Job, JobHandle, JobReport, JobState, Limits
from b2cal.backends.launch import call
from b2cal.errors import B2CalError
from b2cal.settings import Settings
from b2cal.sites import BackendSettings

log = logging.getLogger("b2cal.backends")


def _run(target: str, directory: str) -> int:
    """What a Dask worker runs for one job: its exit status."""
    return call(target, Path(directory))


class DaskBackend(Backend):
    """Collector jobs on a Dask cluster (see the module docstring)."""

    name = "dask"

    def __init__(
        self,
        limits: Limits | None = None,
        *,
        scheduler: str | None = None,
        cluster: str | None = None,
        workers: int = 2,
        jobs: int = 2,
        cluster_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(limits)
        if scheduler and cluster:
            raise B2CalError("the dask backend takes a scheduler address or a cluster, not both")
        if cluster not in (None, "slurm"):
            raise B2CalError(f"the dask backend starts local or slurm clusters, not {cluster!r}")
        self._lock = threading.Lock()
        self._futures: dict[str, Any] = {}
        self._counter = itertools.count(1)
        self._cluster: Any = None
        self._client = self._connect(scheduler, cluster, workers, jobs, cluster_options or {})

    def _connect(
        self,
        scheduler: str | None,
        cluster: str | None,
        workers: int,
        jobs: int,
        options: dict[str, Any],
    ) -> Any:
        from distributed import Client, LocalCluster

        try:
            if scheduler:
                return Client(scheduler, timeout="10s")
            if cluster == "slurm":
                from dask_jobqueue.slurm import SLURMCluster

                asked = self.resources
                # The Slurm jobs' own output (slurm-<id>.out) goes to b2cal's home, not into
                # whatever folder the driver was started from.
                logs = Settings().home / "logs" / "dask-workers"
                options.setdefault("log_directory", str(logs))
                self._cluster = SLURMCluster(
                    cores=asked.cores,
                    processes=1,
                    memory=f"{asked.memory_mb or 1000}MB",
                    walltime=_walltime(asked.wall_minutes),
                    queue=asked.queue,
                    **options,
                )
                self._cluster.scale(jobs=jobs)
            else:
                self._cluster = LocalCluster(
                    n_workers=workers, threads_per_worker=1, processes=True,
                    dashboard_address=None, **options,
                )  # fmt: skip
            return Client(self._cluster)
        except (OSError, TimeoutError, ValueError) as exc:
            self.close()
            where = scheduler or f"a {cluster or 'local'} cluster"
            raise B2CalError(f"the Dask backend cannot reach {where}: {exc}") from None

    def submit(self, jobs: Sequence[Job]) -> list[JobHandle]:
        self.check_folders(jobs)
        keys = [f"b2cal-{job.name}-{next(self._counter)}" for job in jobs]
        futures = self._client.map(
            _run,
            [job.target for job in jobs],
            [str(job.directory) for job in jobs],
            key=keys,
            pure=False,
        )
        with self._lock:
            self._futures.update(zip(keys, futures, strict=True))
        return [JobHandle(key, job) for key, job in zip(keys, jobs, strict=True)]

    def poll(self, handles: Sequence[JobHandle]) -> dict[str, JobReport]:
        with self._lock:
            futures = {h.job_id: self._futures[h.job_id] for h in handles}
        return {job_id: _report(future) for job_id, future in futures.items()}

    def wait(self, handles: Sequence[JobHandle], timeout: float) -> None:
        from distributed import wait

        with self._lock:
            futures = [self._futures[h.job_id] for h in handles]
        try:
            wait(futures, timeout=timeout, return_when="FIRST_COMPLETED")
        except TimeoutError:
            return

    def cancel(self, handles: Sequence[JobHandle]) -> None:
        with self._lock:
            futures = [self._futures[h.job_id] for h in handles if h.job_id in self._futures]
        if futures:
            self._client.cancel(futures)

    def close(self) -> None:
        client = getattr(self, "_client", None)
        if client is not None:
            client.close()
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None


def _report(future: Any) -> JobReport:
    status = future.status
    if status == "pending":
        return JobReport(JobState.RUNNING)
    if status == "cancelled":
        return JobReport(JobState.CANCELLED, "cancelled")
    if status == "lost":
        return JobReport(JobState.FAILED, "its Dask worker was lost")
    if status == "error":
        exc = future.exception()
        return JobReport(JobState.FAILED, f"{type(exc).__name__}: {' '.join(str(exc).split())}")
    code = future.result()
    return (
        JobReport(JobState.DONE) if code == 0 else JobReport(JobState.FAILED, f"exit status {code}")
    )


def _walltime(minutes: int | None) -> str:
    total = minutes or 60
    return f"{total // 60:02d}:{total % 60:02d}:00"


def open_dask(settings: BackendSettings) -> DaskBackend:
    """The Dask backend as a site configures it: ``[backend] workers`` (a local cluster),
    ``[backend.resources]`` (what each Slurm job of a ``SLURMCluster`` asks for), and in
    ``[backend.options]``: ``scheduler`` or ``cluster = "slurm"`` with ``jobs`` (how many
    Slurm jobs of one worker) and ``cluster_options`` (more keyword arguments for the
    cluster, e.g. ``job_extra_directives``)."""
    options: dict[str, Any] = dict(settings.options)
    unknown = sorted(set(options) - {"scheduler", "cluster", "jobs", "cluster_options"})
    if unknown:
        raise B2CalError(f"[backend.options] of the dask backend: unknown {', '.join(unknown)}")
    return DaskBackend(
        Limits.of(settings, 0.5),
        scheduler=options.get("scheduler"),
        cluster=options.get("cluster"),
        workers=settings.workers,
        jobs=int(options.get("jobs", 2)),
        cluster_options=dict(options.get("cluster_options", {})),
    )
