"""1000 short collector-like jobs on the loopback Slurm: b2cal's array submission against one
``sbatch`` per job, and the overhead per job against the local backend.

Each job is ``python -m b2cal.backends.launch bench_targets:touch DIR`` (it writes one small
file), so what is measured is the batch machinery: submission, scheduling, polling. Reported:

* submission time of the 1000 jobs: one ``sbatch --array`` (goal: one call, under 2 s), against
  1000 ``sbatch`` calls;
* Slurm commands per poll while they run (goal: one ``squeue`` for all of them);
* total time until all have ended, b2cal's array against one ``sbatch`` each (both polled
  the same way), and b2cal's array against the local backend's pool of two workers: the
  overhead per job.

Usage: python bench/slurm_submit.py [JOBS [REPEATS]]   (default 1000 1). Starts the loopback
Slurm with scripts/slurm.sh (as root: it installs Debian's packages if needed) and stops it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import interleaved
from rich.console import Console
from rich.table import Table

from b2cal.backends.base import Backend, Job, JobHandle, Limits
from b2cal.backends.local import LocalBackend
from b2cal.backends.slurm import SlurmBackend

HERE = Path(__file__).parent
SCRIPT = HERE.parent / "scripts" / "slurm.sh"
TARGET = "bench_targets:touch"


def make_jobs(folder: Path, count: int) -> list[Job]:
    shutil.rmtree(folder, ignore_errors=True)
    jobs = []
    for number in range(count):
        directory = folder / "jobs" / f"{number:05d}"
        directory.mkdir(parents=True)
        jobs.append(Job(f"bench.i0.j{number:05d}", directory, TARGET))
    return jobs


def until_done(backend: Backend, handles: list[JobHandle]) -> int:
    """Poll until every job ended; the number of polls."""
    polls = 0
    while True:
        reports = backend.poll(handles)
        polls += 1
        failed = [r for r in reports.values() if r.state.finished and r.state.value != "DONE"]
        if failed:
            raise SystemExit(f"{len(failed)} jobs failed: {failed[0].reason}")
        if all(r.state.finished for r in reports.values()):
            return polls
        backend.wait(handles, backend.poll_seconds)


def one_sbatch_each(jobs: list[Job], backend: SlurmBackend) -> list[JobHandle]:
    """The baseline: what a driver without arrays does, one ``sbatch --wrap`` per job."""
    handles = []
    for job in jobs:
        command = f"{sys.executable} -m b2cal.backends.launch {TARGET} {job.directory}"
        answer = subprocess.run(
            ["sbatch", "--parsable", f"--output={job.directory}/slurm.out", "--wrap", command],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        handles.append(JobHandle(answer.strip().split(";")[0], job))
    return handles


def main() -> int:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    console = Console(width=120)
    folder = Path(tempfile.mkdtemp(prefix="b2cal-bench-slurm-"))
    state = folder / "slurm"
    up = subprocess.run(["bash", str(SCRIPT), "up", str(state)], capture_output=True, text=True)
    if up.returncode != 0:
        console.print(f"[red]no loopback Slurm[/]: {up.stderr.strip()}")
        return 1
    os.environ["SLURM_CONF"] = str(state / "slurm.conf")
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(HERE), os.environ.get("PYTHONPATH")])
    )
    measured: dict[str, float] = {}
    polls: list[tuple[int, int]] = []  # (polls, squeue calls)
    try:
        slurm = SlurmBackend(Limits(poll_seconds=1.0))

        def array() -> None:
            jobs = make_jobs(folder / "array", count)
            start = time.perf_counter()
            before = slurm.calls["sbatch"]
            handles = slurm.submit(jobs)
            measured["array submission [s]"] = time.perf_counter() - start
            measured["sbatch calls"] = slurm.calls["sbatch"] - before
            squeues = slurm.calls["squeue"]
            done = until_done(slurm, handles)
            polls.append((done, slurm.calls["squeue"] - squeues))

        def each() -> None:
            jobs = make_jobs(folder / "each", count)
            start = time.perf_counter()
            handles = one_sbatch_each(jobs, slurm)
            measured["one sbatch per job: submission [s]"] = time.perf_counter() - start
            until_done(slurm, handles)

        def local() -> None:
            with LocalBackend(2, poll_seconds=1.0) as pool:
                until_done(pool, pool.submit(make_jobs(folder / "local", count)))

        times = interleaved(repeats, {"array": array, "each": each, "local": local})
    finally:
        subprocess.run(["bash", str(SCRIPT), "down", str(state)], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)
    table = Table(title=f"{count} short jobs on the loopback Slurm (medians of {repeats})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("b2cal: submission of all jobs", f"{measured['array submission [s]']:.2f} s")
    table.add_row("b2cal: sbatch calls", f"{measured['sbatch calls']:.0f}")
    table.add_row("b2cal: squeue calls per poll", f"{polls[-1][1] / polls[-1][0]:.2f}")
    table.add_row(
        "one sbatch per job: submission", f"{measured['one sbatch per job: submission [s]']:.2f} s"
    )
    table.add_row("b2cal: all jobs ended", f"{times['array']:.1f} s")
    table.add_row("one sbatch per job: all jobs ended", f"{times['each']:.1f} s")
    table.add_row("ratio one sbatch per job / b2cal array", f"{times['each'] / times['array']:.2f}")
    table.add_row("local backend (2 workers): all jobs ended", f"{times['local']:.1f} s")
    table.add_row("ratio Slurm array / local backend", f"{times['array'] / times['local']:.2f}")
    per_job = (times["array"] - times["local"]) / count * 1000
    table.add_row("overhead per job, Slurm over local", f"{per_job:.0f} ms")
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
