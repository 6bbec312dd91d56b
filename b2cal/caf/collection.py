"""Collection: input files split into collector jobs, each job run, outputs merged per run.

A collector job is a directory::

    jobs/0003/spec.json    which files, which database chain (written by the planner)
    jobs/0003/output.pkl   the job's accumulators, one per run (written by the job)
    jobs/0003/status.json  state, events read, bad files and why (written last)
    jobs/0003/job.log      what the job did

Every file is written atomically and ``status.json`` last, so "status says done" means the
output is complete: a rerun skips such jobs and redoes any job that was killed mid-way.
Run a job by hand (or from a batch system) with ``python -m b2cal.caf.collection JOB_DIR``.
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import shutil
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from b2cal.caf.accumulator import Accumulator, RunAccumulators, merge_runs
from b2cal.caf.atomic_file import atomic_write_bytes, atomic_write_json
from b2cal.caf.calibration import Collector, RunContext
from b2cal.caf.chain import PayloadChain
from b2cal.catalog.storage import InputFile
from b2cal.errors import B2CalError, BadInputFile

SPEC = "spec.json"
OUTPUT = "output.pkl"
STATUS = "status.json"
LOG = "job.log"
COLLECTOR = "collector.pkl"
#: Chunk size for reading a file: bounds a job's memory whatever the file size.
STEP_SIZE = "64 MB"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BadFile:
    """An input file left out of the collection, and why."""

    path: str
    reason: str


@dataclass
class JobStatus:
    """What a finished collector job reports (``status.json``)."""

    state: str
    events: int = 0
    files: int = 0
    bad_files: list[BadFile] = field(default_factory=list)
    seconds: float = 0.0
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "events": self.events,
            "files": self.files,
            "bad_files": [{"path": b.path, "reason": b.reason} for b in self.bad_files],
            "seconds": round(self.seconds, 3),
            "error": self.error,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> JobStatus:
        return cls(
            state=doc["state"],
            events=doc.get("events", 0),
            files=doc.get("files", 0),
            bad_files=[BadFile(**b) for b in doc.get("bad_files", [])],
            seconds=doc.get("seconds", 0.0),
            error=doc.get("error", ""),
        )


@dataclass(frozen=True)
class CollectorJob:
    """One planned collector job."""

    index: int
    directory: Path
    files: tuple[InputFile, ...]

    def status(self) -> JobStatus | None:
        path = self.directory / STATUS
        if not path.exists():
            return None
        return JobStatus.from_json(json.loads(path.read_text()))

    @property
    def done(self) -> bool:
        status = self.status()
        return status is not None and status.state == "done"

    def output(self) -> RunAccumulators:
        with (self.directory / OUTPUT).open("rb") as handle:
            result: RunAccumulators = pickle.load(handle)
        return result


def split_files(
    files: Sequence[InputFile], max_files_per_job: int, max_jobs: int | None = None
) -> list[tuple[InputFile, ...]]:
    """Split sorted input files into consecutive jobs of at most ``max_files_per_job`` files.

    With ``max_jobs``, jobs get more files each so that there are no more than that many. The
    split depends only on the file list and these two numbers, never on the number of workers,
    which keeps the merge order, and so the payloads, the same on every backend.
    """
    ordered = sorted(files)
    per_job = max(1, max_files_per_job)
    if max_jobs is not None and ordered:
        per_job = max(per_job, math.ceil(len(ordered) / max_jobs))
    return [tuple(ordered[i : i + per_job]) for i in range(0, len(ordered), per_job)]


def plan_collection(
    iteration_dir: Path,
    *,
    calibration: str,
    iteration: int,
    collector: Collector,
    files: Sequence[InputFile],
    chain: Sequence[Path],
    max_files_per_job: int,
    max_jobs: int | None = None,
) -> list[CollectorJob]:
    """Write the job specs of one collection (or keep them, if a previous run wrote the same).

    A job whose spec changed (other files, another chain) loses its old output, so a rerun can
    never mix outputs of different plans.
    """
    iteration_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(iteration_dir / COLLECTOR, pickle.dumps(collector, protocol=5))
    jobs = []
    groups = split_files(files, max_files_per_job, max_jobs)
    for index, group in enumerate(groups):
        directory = iteration_dir / "jobs" / f"{index:04d}"
        spec = {
            "calibration": calibration,
            "iteration": iteration,
            "collector": str((iteration_dir / COLLECTOR).resolve()),
            "chain": [str(Path(d).resolve()) for d in chain],
            "files": [f.to_json() for f in group],
        }
        spec_path = directory / SPEC
        if not spec_path.exists() or json.loads(spec_path.read_text()) != spec:
            if directory.exists():
                shutil.rmtree(directory)
            atomic_write_json(spec_path, spec)
        jobs.append(CollectorJob(index, directory, group))
    _remove_stale_jobs(iteration_dir / "jobs", len(groups))
    return jobs


def _remove_stale_jobs(jobs_dir: Path, count: int) -> None:
    for directory in jobs_dir.iterdir():
        if directory.is_dir() and directory.name.isdigit() and int(directory.name) >= count:
            shutil.rmtree(directory)


def merge_job_outputs(jobs: Sequence[CollectorJob]) -> RunAccumulators:
    """Merge the per-run outputs of finished jobs in job order (fixed, hence reproducible)."""
    return merge_runs(job.output() for job in sorted(jobs, key=lambda j: j.index))


def run_collector_job(job_dir: Path) -> JobStatus:
    """Run the collector job in ``job_dir``; the function every backend ends up calling.

    Unreadable input files (corrupt, truncated, wrong metadata, missing branches) are recorded
    as bad and left out; the job still succeeds. Any other error fails the job: its traceback
    goes to ``job.log`` and ``status.json`` says ``failed``, and the error is raised again.
    """
    job_dir = Path(job_dir)
    handler = logging.FileHandler(job_dir / LOG, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    job_log = logging.getLogger("b2cal.job")
    job_log.setLevel(logging.INFO)
    job_log.addHandler(handler)
    start = time.perf_counter()
    try:
        spec = json.loads((job_dir / SPEC).read_text())
        with open(spec["collector"], "rb") as handle:
            collector: Collector = pickle.load(handle)
        chain = PayloadChain([Path(p) for p in spec["chain"]])
        files = [InputFile.from_json(doc) for doc in spec["files"]]
        job_log.info("job %s: %d files, chain %s", job_dir, len(files), spec["chain"])
        output, status = collect_files(collector, files, chain, spec["iteration"], job_log)
        status.seconds = time.perf_counter() - start
        atomic_write_bytes(job_dir / OUTPUT, pickle.dumps(output, protocol=5))
        atomic_write_json(job_dir / STATUS, status.to_json())
        job_log.info("done: %d events, %d bad files", status.events, len(status.bad_files))
        return status
    except BaseException as exc:
        job_log.error("job failed:\n%s", traceback.format_exc())
        failed = JobStatus("failed", seconds=time.perf_counter() - start, error=_one_line(exc))
        atomic_write_json(job_dir / STATUS, failed.to_json())
        raise
    finally:
        job_log.removeHandler(handler)
        handler.close()


def collect_files(
    collector: Collector,
    files: Sequence[InputFile],
    chain: PayloadChain,
    iteration: int,
    job_log: logging.Logger = log,
) -> tuple[RunAccumulators, JobStatus]:
    """Run ``collector`` over ``files`` in order: per-run accumulators, and what was read."""
    per_file: list[dict[Any, Accumulator]] = []
    status = JobStatus("done", files=len(files))
    for file in files:
        context = RunContext(file.exprun, iteration, chain.lookup)
        try:
            accumulator, events = _collect_file(collector, file, context)
        except BadInputFile as exc:
            job_log.warning("bad input file %s: %s", file.path, exc)
            status.bad_files.append(BadFile(str(file.path), str(exc)))
            continue
        status.events += events
        if accumulator is not None:
            per_file.append({file.exprun: accumulator})
    return merge_runs(per_file), status


def _collect_file(
    collector: Collector, file: InputFile, context: RunContext
) -> tuple[Accumulator | None, int]:
    """Process every chunk of one file; nothing of a file that fails half-way is kept."""
    total: Accumulator | None = None
    events = 0
    for chunk in read_chunks(file, collector.branches):
        part = collector.process(chunk, context)
        total = part if total is None else total + part
        events += len(chunk)
    return total, events


def read_chunks(file: InputFile, branches: Sequence[str]) -> Iterator[Any]:
    """Yield the events of ``file`` in chunks of ``branches``; raise BadInputFile if unusable.

    Checks, before any event is used: the file opens and is as long as its header says (a
    truncated copy fails here), holds a ``metadata`` JSON matching the
    run and stream its path claims, and an ``events`` tree with every branch the collector
    needs and as many entries as the metadata says.
    """
    import uproot  # imported here: loading uproot costs ~0.5 s, only job processes need it

    try:
        source = uproot.open(file.path)
    except Exception as exc:
        raise BadInputFile(f"cannot open as ROOT: {_one_line(exc)}") from exc
    with source:
        size = file.path.stat().st_size
        if source.file.fEND > size:
            raise BadInputFile(f"truncated: {size} bytes, its header says {source.file.fEND}")
        tree = _checked_tree(source, file, branches)
        iterator = tree.iterate(list(branches), step_size=STEP_SIZE, library="ak")
        while True:
            try:
                chunk = next(iterator)
            except StopIteration:
                return
            except Exception as exc:
                raise BadInputFile(f"cannot read events: {_one_line(exc)}") from exc
            yield chunk


def _checked_tree(source: Any, file: InputFile, branches: Sequence[str]) -> Any:
    try:
        metadata = json.loads(str(source["metadata"]))
    except Exception as exc:
        raise BadInputFile(f"no readable metadata JSON: {_one_line(exc)}") from exc
    if not isinstance(metadata, dict):
        raise BadInputFile("metadata is not a JSON object")
    claimed = (metadata.get("experiment"), metadata.get("run"), metadata.get("stream"))
    if claimed != (file.exp, file.run, file.stream):
        raise BadInputFile(
            f"metadata says experiment {claimed[0]} run {claimed[1]} stream {claimed[2]}, "
            f"its path says experiment {file.exp} run {file.run} stream {file.stream}"
        )
    try:
        tree = source["events"]
        present = set(tree.keys())
    except Exception as exc:
        raise BadInputFile(f"no readable 'events' tree: {_one_line(exc)}") from exc
    missing = [b for b in branches if b not in present]
    if missing:
        raise BadInputFile(f"missing branches: {', '.join(missing)}")
    expected = metadata.get("nevents")
    if isinstance(expected, int) and tree.num_entries != expected:
        raise BadInputFile(f"metadata says {expected} events, tree has {tree.num_entries}")
    return tree


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for batch systems: ``python -m b2cal.caf.collection JOB_DIR``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m b2cal.caf.collection JOB_DIR", file=sys.stderr)
        return 1
    try:
        run_collector_job(Path(args[0]))
    except B2CalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        print(f"error: collector job failed: {_one_line(exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
