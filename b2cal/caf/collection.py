"""A collector job, as it runs on a worker or a batch node: files in, per-run accumulators out.

A job is a folder holding its spec (which files, which collector, which database chain); the
job writes its output (an accumulator per run), then its status, last. A backend runs it by
calling :data:`JOB_TARGET` with the folder (``python -m b2cal.backends.launch
b2cal.caf.collection:run_job JOB_DIR`` on a batch node), so a job needs nothing but its folder,
the input files and the chain's local databases: it never talks to a database or a server.
"""

from __future__ import annotations

import inspect
import logging
import pickle
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from b2cal.caf.accumulator import Accumulator, RunAccumulators
from b2cal.caf.calibration import Collector, ExpertSettings, RunContext
from b2cal.caf.chain import PayloadChain, database_digest
from b2cal.caf.records import BadFile, JobStatus, now
from b2cal.caf.workspace import JobArea, host
from b2cal.catalog.inputs import InputFile
from b2cal.catalog.rootfile import one_line, read_chunks
from b2cal.core.files import canonical_json, sha256sum
from b2cal.core.iov import ExpRun
from b2cal.errors import B2CalError, BadInputFile, CollectorFailed

#: What a backend calls to run a collector job (see :class:`b2cal.backends.base.Job`).
JOB_TARGET = "b2cal.caf.collection:run_job"

log = logging.getLogger("b2cal.job")


def collector_bytes(collector: Collector, settings: ExpertSettings | None) -> bytes:
    """The collector and its settings as a job loads them (pickled together)."""
    return pickle.dumps((collector, settings), protocol=5)


def collector_digest(collector: Collector, settings: ExpertSettings | None) -> str:
    """What makes collector jobs the same: the collector (its state and the source of the
    modules that define its class: a fixed collector collects again), and the settings it
    reads."""
    view = settings.collector_view() if settings is not None else None
    return sha256sum(
        pickle.dumps(collector, protocol=5) + _code_digest(type(collector)).encode()
        + canonical_json(view)
    )  # fmt: skip


def _code_digest(cls: type) -> str:
    sources = []
    for klass in cls.__mro__:
        if klass is object or klass is Collector:
            continue
        try:
            path = inspect.getsourcefile(klass)
            sources.append(Path(path).read_bytes() if path else klass.__qualname__.encode())
        except (OSError, TypeError):  # defined interactively: its name is all there is
            sources.append(klass.__qualname__.encode())
    return sha256sum(b"\0".join(sources))


def run_job(directory: Path) -> int:
    """Run the collector job in ``directory``: 0 when it succeeded, 1 when it failed.

    Unreadable input files (corrupt, truncated, wrong metadata, missing branches) are recorded
    as bad and left out; the job still succeeds. Any other error fails the job: its traceback
    goes to ``job.log`` and the status says ``failed`` with the error in one line.
    """
    job = JobArea.at(directory)
    handler = logging.FileHandler(job.log_path, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    start = time.perf_counter()
    spec_digest = ""
    try:
        spec = job.spec()
        if spec is None:
            raise FileNotFoundError(f"no job spec in {directory}")
        spec_digest = spec.digest()
        changed = [
            str(link.path) for link in spec.chain if database_digest(link.path) != link.digest
        ]
        if changed:
            raise B2CalError(
                f"the database chain changed since the job was planned: {', '.join(changed)}"
            )
        with spec.collector.open("rb") as handle:
            collector, settings = pickle.load(handle)
        chain = PayloadChain([link.path for link in spec.chain])
        log.info("job %s: %d files, chain %s", directory, len(spec.files), chain.directories)
        output, status = collect_files(collector, spec.files, chain, spec.iteration, settings)
        status.seconds = round(time.perf_counter() - start, 3)
        status.finished = now()
        status.spec_digest = spec_digest
        job.write_output(output)
        job.write_status(status)
        log.info("done: %d events, %d bad files", status.events, len(status.bad_files))
        return 0
    except BaseException as exc:
        log.error("job failed:\n%s", traceback.format_exc())
        seconds = round(time.perf_counter() - start, 3)
        job.write_status(
            JobStatus(
                state="failed",
                spec_digest=spec_digest,
                seconds=seconds,
                error=one_line(exc),
                failed_file=exc.path if isinstance(exc, CollectorFailed) else None,
                host=host(),
            )
        )
        if not isinstance(exc, Exception):
            raise  # an interrupt: the process is going away anyway
        return 1
    finally:
        log.removeHandler(handler)
        handler.close()


def collect_files(
    collector: Collector,
    files: Sequence[InputFile],
    chain: PayloadChain,
    iteration: int,
    settings: ExpertSettings | None = None,
) -> tuple[RunAccumulators, JobStatus]:
    """Run ``collector`` over ``files`` in order: per-run accumulators, and what was read."""
    per_run: RunAccumulators = {}
    owned: set[ExpRun] = set()  # runs whose accumulator is our copy, merged into in place
    status = JobStatus(state="done", files=len(files), host=host())
    for file in files:
        context = RunContext(file.exprun, iteration, chain.lookup, settings)
        try:
            accumulator, events = _collect_file(collector, file, context)
        except BadInputFile as exc:
            log.warning("%s", exc)
            status.bad_files.append(BadFile(path=exc.path, reason=exc.reason))
            continue
        except Exception as exc:  # the collector itself broke on this file: say which
            raise CollectorFailed(file.path, f"{type(exc).__name__}: {one_line(exc)}") from exc
        status.events += events
        if accumulator is None:
            continue
        run = file.exprun
        if run not in per_run:  # merged as files come, in file order
            per_run[run] = accumulator
            continue
        if run not in owned:
            per_run[run] = per_run[run].copy()
            owned.add(run)
        per_run[run] += accumulator
    return dict(sorted(per_run.items())), status


def _collect_file(
    collector: Collector, file: InputFile, context: RunContext
) -> tuple[Accumulator | None, int]:
    """Process every chunk of one file; nothing of a file that fails half-way is kept."""
    total: Accumulator | None = None
    events = 0
    for index, chunk in enumerate(read_chunks(file, collector.branches)):
        part = collector.process(chunk, context)
        if total is None:
            total = part
        else:
            if index == 1:  # merge into a copy, never into what process() returned
                total = total.copy()
            total += part
        events += len(chunk)
    return total, events
