"""The records the engine keeps in its workspace, as pydantic models.

Every record is a JSON file written atomically (:meth:`Record.write`), so a reader — a rerun,
``caf status`` while a run is going, a Prefect task in another process — sees either the whole
record or none. Which file holds which record is the workspace's business
(:mod:`b2cal.caf.workspace`); what the records mean is here.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer

from b2cal.caf.calibration import AlgorithmResult
from b2cal.caf.strategies import RunRange
from b2cal.catalog.inputs import FileStamp, InputFile
from b2cal.core.files import atomic_write_json, canonical_json, create_exclusive, sha256sum
from b2cal.core.iov import ExpRun, IoV
from b2cal.errors import B2CalError


def _iov(value: Any) -> IoV:
    return IoV.parse(value) if isinstance(value, str) else value


#: An IoV kept as its ``database.txt`` text, ``"expLow,runLow,expHigh,runHigh"``.
IoVText = Annotated[IoV, BeforeValidator(_iov), PlainSerializer(str, return_type=str)]


def now() -> datetime:
    return datetime.now(UTC)


class Record(BaseModel):
    """A JSON record of the workspace."""

    model_config = ConfigDict(extra="forbid")

    @classmethod
    def read(cls, path: Path) -> Self | None:
        """The record in ``path``, or None if there is none; B2CalError if it is unreadable."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return cls.model_validate_json(data)
        except ValueError as exc:
            first = str(exc).splitlines()[0]
            raise B2CalError(f"{path} is not a valid b2cal record ({first})") from None

    def write(self, path: Path) -> None:
        atomic_write_json(path, self.model_dump(mode="json"))

    def create(self, path: Path) -> bool:
        """Write the record only if there is none yet (of two writers, one wins); whether it
        was written."""
        return create_exclusive(path, canonical_json(self.model_dump(mode="json")))


# --- the run and each calibration ---------------------------------------------------------------
class RunRecord(Record):
    """What an output was made with (its identity for resume) and the calibration-run id.

    ``arguments`` is the identity compared on resume; the other fields are what the steps
    need of it, typed.
    """

    arguments: dict[str, Any]
    calibration_run: str
    #: The calibrations of the run, in dependency order.
    calibrations: list[str]
    exp: int
    first_run: int
    last_run: int
    open_ended: bool
    created: datetime = Field(default_factory=now)

    @property
    def requested(self) -> RunRange:
        return RunRange(ExpRun(self.exp, self.first_run), ExpRun(self.exp, self.last_run))


class CalibrationRecord(Record):
    """One calibration of a run: its configuration, its input files and where it looks up.

    ``config`` is the calibration's section of ``caf run --config`` (part of the run's
    identity); ``stamps`` identify the input files as they were when the run started, so that
    a resume over changed files is refused.
    """

    name: str
    config: dict[str, Any] = Field(default_factory=dict)
    #: What the calibration computes with (:func:`b2cal.caf.plan.fingerprint`).
    effective: dict[str, Any] = Field(default_factory=dict)
    #: Calibrations whose outputs are in the database chain, nearest first.
    upstream: list[str] = Field(default_factory=list)
    #: Upstream calibrations this workspace does not compute, and where their payloads are
    #: instead: a local database (written before the first collection: payloads computed
    #: elsewhere, e.g. at another site), or None (skipped: the input databases stand in).
    elsewhere: dict[str, Path | None] = Field(default_factory=dict)
    input_databases: list[Path] = Field(default_factory=list)
    files: list[InputFile]
    stamps: list[FileStamp]
    runs_without_files: list[int] = Field(default_factory=list)


# --- collector jobs ---------------------------------------------------------------------------
class BadFile(Record):
    """An input file left out of the collection, and why."""

    path: str
    reason: str


class ChainLink(Record):
    """A local database of the chain and a digest of what it holds (payloads included)."""

    path: Path
    digest: str


class JobSpec(Record):
    """What a collector job does. A job whose spec changed is redone from scratch."""

    calibration: str
    iteration: int
    #: The pickled collector and its settings, and their digest (a changed collector or
    #: changed settings give another spec, so old outputs are not reused).
    collector: Path
    collector_digest: str
    chain: list[ChainLink]
    files: list[InputFile]
    #: The files' stamps as planned: a file replaced since (and accepted by a rerun or a
    #: resubmission) gives another spec, so only its job is collected again.
    stamps: list[FileStamp] = Field(default_factory=list)

    def digest(self) -> str:
        """Identifies the spec: a status says which spec its job ran."""
        return sha256sum(canonical_json(self.model_dump(mode="json")))


class ExecutionOrder(Record):
    """What one algorithm execution in a process of its own is asked to do: the runs whose
    collector output it sums (run order), for which iteration, with which payload chain."""

    runs: list[tuple[int, int]]
    iteration: int
    chain: list[Path]
    #: Echoed in the record of how it ended: which order that record answers.
    token: str = ""

    def group(self) -> tuple[ExpRun, ...]:
        return tuple(ExpRun(exp, run) for exp, run in self.runs)


class ExecutionDone(Record):
    """How an algorithm execution in a process of its own ended; written last (its outcome,
    pickled, beside it). ``error``: an internal error of the algorithm, one line (traceback
    in the execution's ``error.log``)."""

    process: int
    started: float
    ended: float
    error: str = ""
    token: str = ""


class JobStatus(Record):
    """How a collector job ended; written last, so ``done`` means its output is complete.

    ``spec_digest`` is the digest of the spec the job ran: a job that was still running when
    its folder got another spec cannot pass its output off as the new spec's.
    """

    state: Literal["done", "failed"]
    spec_digest: str = ""
    events: int = 0
    files: int = 0
    bad_files: list[BadFile] = Field(default_factory=list)
    seconds: float = 0.0
    error: str = ""
    #: The input file the collector broke on, when it did (a crash, not an unreadable file).
    failed_file: str | None = None
    host: str = ""
    finished: datetime = Field(default_factory=now)


class JobSubmission(Record):
    """Where and when a job was handed to a backend (the latest attempt)."""

    backend: str
    job_id: str
    attempt: int
    submitted: datetime = Field(default_factory=now)


# --- iterations and outcomes -------------------------------------------------------------------
class PayloadRef(Record):
    name: str
    iov: IoVText


class IterationResult(Record):
    """What one iteration produced: the strategy's result, its payloads, what was read."""

    iteration: int
    result: AlgorithmResult
    message: str = ""
    payloads: list[PayloadRef] = Field(default_factory=list)
    #: Every algorithm execution (runs, IoV, result, metrics), merged-away ones included.
    executions: list[dict[str, Any]] = Field(default_factory=list)
    events: int = 0
    jobs: int = 0
    bad_files: list[BadFile] = Field(default_factory=list)
    #: Seconds spent merging the job outputs, and in the strategy and algorithm.
    merge_seconds: float = 0.0
    algorithm_seconds: float = 0.0
    #: Executions run ahead (in parallel) that the strategy's serial rule did not make; their
    #: files are kept apart from those of the executions it made.
    discarded: list[dict[str, Any]] = Field(default_factory=list)

    def computed(self) -> dict[str, Any]:
        """The record without where and when it was computed (seconds, process ids, start and
        end times, folders, executions run ahead): what two computations of the same
        iteration, serial or parallel, must agree on."""
        where = {"process", "started", "ended", "folder"}
        data = self.model_dump(
            mode="json", exclude={"merge_seconds", "algorithm_seconds", "discarded"}
        )
        data["executions"] = [
            {k: v for k, v in e.items() if k not in where} for e in data["executions"]
        ]
        return data


class ValidationOutcome(Record):
    passed: bool
    metrics: dict[str, Any] = Field(default_factory=dict)
    message: str = ""


class CalibrationOutcome(Record):
    """How a calibration ended: the row of the final table."""

    calibration: str
    result: AlgorithmResult
    iterations: int = 0
    iovs: list[IoVText] = Field(default_factory=list)
    message: str = ""
    converged: bool | None = None
    events: int = 0
    jobs: int = 0
    bad_files: list[BadFile] = Field(default_factory=list)
    validation: ValidationOutcome | None = None
    #: Requested runs for which no input file was found (said in the table and the log).
    runs_without_files: list[int] = Field(default_factory=list)

    @property
    def finished(self) -> bool:
        """Whether a rerun keeps this outcome (OK or NOT_ENOUGH_DATA) or tries again."""
        return self.result is not AlgorithmResult.FAILURE
