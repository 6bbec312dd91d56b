"""The calibration API: what an expert writes (collector, algorithm) and how it is declared.

A *collector* is a processor in coffea's sense: it turns the events of one input file into an
:class:`~b2cal.caf.accumulator.Accumulator`, given the constants valid for that file's run.
An *algorithm* turns the merged accumulator of a group of runs into payloads, or asks to iterate.
A :class:`Calibration` ties them together with the CAF settings (strategy, iterations, job
splitting) and is registered as a plugin in the ``b2cal.calibrations`` entry-point group.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from b2cal.caf.accumulator import Accumulator
from b2cal.core.iov import ExpRun

#: A payload's constants: a JSON-serialisable document (lists, numbers, strings).
PayloadDoc = dict[str, Any]

#: Looks up the payload ``name`` valid at ``exprun`` in the database chain (None if absent).
PayloadLookup = Callable[[str, ExpRun], "PayloadDoc | None"]

#: What a collector receives for one file: branch name -> flat or jagged array.
Events = Mapping[str, Any]


class AlgorithmResult(enum.Enum):
    """Result codes of an algorithm execution (CAF names), ordered from best to worst."""

    OK = "OK"
    ITERATE = "ITERATE"
    NOT_ENOUGH_DATA = "NOT_ENOUGH_DATA"
    FAILURE = "FAILURE"


class ExpertSettings(BaseModel):
    """Base of a calibration's expert settings: numbers an expert tunes without changing code.

    A calibration declares its subclass (with defaults) as :attr:`Calibration.settings`;
    ``caf run --config`` may override fields per calibration, and unknown keys or wrong types
    are refused. Collectors and algorithms read them with ``MySettings.of(context)``.
    """

    #: Strict: no silent conversions (``true`` is not the number 1, ``"5"`` not 5).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    #: The fields the collector reads. A collector job's identity includes only these, so a
    #: rerun that changes only other fields reuses every collector job. None (the default)
    #: means the collector may read any field: every change collects again.
    collector_fields: ClassVar[tuple[str, ...] | None] = None

    def collector_view(self) -> dict[str, Any]:
        """The fields the collector reads, with their values (what a job's identity holds)."""
        values = self.model_dump(mode="json")
        if self.collector_fields is None:
            return values
        return {name: values[name] for name in self.collector_fields}

    @classmethod
    def of(cls, context: RunContext | AlgorithmContext) -> Self:
        """These settings as the engine handed them over (the defaults if it handed none,
        as when a test calls a collector or algorithm directly)."""
        given = context.settings
        if given is None:
            return cls()
        if not isinstance(given, cls):
            raise TypeError(f"expected {cls.__name__} settings, got {type(given).__name__}")
        return given


@dataclass(frozen=True)
class RunContext:
    """What a collector knows while it reads the files of one run.

    ``settings`` are the calibration's expert settings (its :attr:`Calibration.settings`
    model, with the overrides of ``caf run --config``), or None if it declares none.
    """

    exprun: ExpRun
    iteration: int
    lookup: PayloadLookup
    settings: ExpertSettings | None = None

    def payload(self, name: str) -> PayloadDoc | None:
        """The payload ``name`` valid for this run, first match in the database chain."""
        return self.lookup(name, self.exprun)


@dataclass(frozen=True)
class AlgorithmContext:
    """What an algorithm knows about the execution it is asked to do (``settings``: as in
    :class:`RunContext`)."""

    runs: tuple[ExpRun, ...]
    iteration: int
    lookup: PayloadLookup
    settings: ExpertSettings | None = None

    def payload(self, name: str, exprun: ExpRun | None = None) -> PayloadDoc | None:
        """The payload ``name`` valid at ``exprun`` (default: the first run of the execution)."""
        return self.lookup(name, exprun if exprun is not None else self.runs[0])


@dataclass
class Execution:
    """The outcome of one algorithm execution: a result code, payloads and metrics.

    ``payloads`` maps payload name to its constants. ``metrics`` are numbers or short strings
    kept for monitoring and validation (never inside the payload file).
    """

    result: AlgorithmResult
    payloads: dict[str, PayloadDoc] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    message: str = ""


class Collector(ABC):
    """Reads events of one run's files and returns an accumulator.

    Subclasses declare the branches they need; the engine checks that every input file has them
    (a file without them is recorded as bad and left out) and reads only those.
    """

    #: Branches of the ``events`` tree this collector reads.
    branches: tuple[str, ...] = ()

    @abstractmethod
    def process(self, events: Events, run: RunContext) -> Accumulator:
        """Turn the events of one file (all of one run) into an accumulator."""


class Algorithm(ABC):
    """Produces payloads from the merged accumulator of a group of runs."""

    @abstractmethod
    def execute(self, data: Accumulator, context: AlgorithmContext) -> Execution:
        """Run once over ``data`` (the sum of the collector output of ``context.runs``)."""

    def boundaries(self, per_run: Mapping[ExpRun, Accumulator]) -> list[ExpRun] | None:
        """Where payload IoVs must start, for the ``sequential_boundaries`` strategy.

        Return None to use the boundaries from the calibration's configuration.
        """
        return None


class StrategyName(enum.StrEnum):
    SINGLE_IOV = "single_iov"
    SEQUENTIAL_RUN_BY_RUN = "sequential_run_by_run"
    SEQUENTIAL_BOUNDARIES = "sequential_boundaries"
    SIMPLE_RUN_BY_RUN = "simple_run_by_run"


class Strategy(BaseModel):
    """An IoV strategy and its parameters."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: StrategyName = StrategyName.SINGLE_IOV
    #: For ``sequential_boundaries``: runs where a new payload IoV starts (the algorithm may
    #: supply its own instead).
    boundaries: tuple[ExpRun, ...] = ()


@dataclass(frozen=True)
class ValidationReport:
    """Outcome of a calibration's validation hook over its final payloads."""

    passed: bool
    metrics: dict[str, Any] = field(default_factory=dict)
    message: str = ""


#: A validation hook: final payloads (one list per payload name, in IoV order) -> report.
Validation = Callable[[Mapping[str, Sequence[PayloadDoc]]], ValidationReport]


class Calibration(BaseModel):
    """A calibration declaration, as registered in the ``b2cal.calibrations`` entry points."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$")
    collector: Collector
    algorithm: Algorithm
    input_streams: tuple[str, ...] = Field(min_length=1)
    depends_on: tuple[str, ...] = ()
    max_iterations: int = Field(default=1, ge=1, le=100, strict=True)
    strategy: Strategy = Strategy()
    max_files_per_job: int = Field(default=10, ge=1, strict=True)
    max_jobs: int | None = Field(default=None, ge=1, strict=True)
    backend_args: dict[str, Any] = Field(default_factory=dict)
    validation: Validation | None = None
    #: Expert settings with their defaults (an :class:`ExpertSettings` subclass), or None.
    settings: ExpertSettings | None = None
    owner: str = ""
    description: str = ""
    #: Units of the payload fields, for reports (validation tables and plots): ``"t0"`` or
    #: ``"Payload.t0"`` -> ``"ns"``. A field left out is shown without one (dimensionless, or
    #: not known): better no unit than a wrong one.
    units: dict[str, str] = Field(default_factory=dict)

    @field_validator("depends_on")
    @classmethod
    def _no_self_dependency(cls, value: tuple[str, ...], info: Any) -> tuple[str, ...]:
        if info.data.get("name") in value:
            raise ValueError("a calibration cannot depend on itself")
        if len(set(value)) != len(value):
            raise ValueError("depends_on lists a calibration twice")
        return value

    @model_validator(mode="after")
    def _boundaries_only_for_their_strategy(self) -> Calibration:
        if self.strategy.name is not StrategyName.SEQUENTIAL_BOUNDARIES and (
            self.strategy.boundaries
        ):
            raise ValueError("boundaries are only used by the sequential_boundaries strategy")
        return self


def as_float_list(values: npt.ArrayLike) -> list[float]:
    """Constants as plain Python floats, so that JSON payloads round-trip exactly."""
    return [float(v) for v in np.asarray(values, dtype=np.float64).ravel()]


def as_float_matrix(values: npt.ArrayLike) -> list[list[float]]:
    """A 2-D array of constants as nested Python float lists."""
    return [as_float_list(row) for row in np.asarray(values, dtype=np.float64)]
