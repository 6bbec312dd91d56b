"""What the state database hands out: plain frozen values, never rows bound to a session."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from b2cal.db.states import BucketState, CalRunState, FileStatus, RequestState, SignoffDecision
from b2cal.sites import RequestKind


@dataclass(frozen=True)
class DataFile:
    id: int
    site: str
    path: str
    size: int
    status: FileStatus
    exp: int | None
    run: int | None
    stream: str | None
    events: int | None
    registered: datetime | None
    reason: str | None


@dataclass(frozen=True)
class Bucket:
    id: int
    site: str
    exp: int
    number: int
    first_run: int
    last_run: int
    state: BucketState
    opened: datetime
    closed: datetime | None
    late_files: int
    runs: int

    @property
    def label(self) -> str:
        return f"e{self.exp} bucket {self.number}"


@dataclass(frozen=True)
class Request:
    id: int
    kind: RequestKind
    site: str
    exp: int
    run_low: int
    run_high: int
    bucket_id: int | None
    calibrations: list[str]
    input_tags: list[str]
    reference_tag: str | None
    staging_tag: str
    config: dict[str, Any]
    open_ended: bool
    state: RequestState
    created: datetime
    created_by: str
    updated: datetime
    flow_run_id: str | None
    message: str | None
    #: Calibrations that run at another site than the request's: calibration -> site.
    placement: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        runs = f"{self.run_low}-{self.run_high}"
        return f"request {self.id} ({self.kind.value}, e{self.exp} runs {runs})"

    def site_of(self, calibration: str) -> str:
        """The site where ``calibration`` runs (default: the request's)."""
        return self.placement.get(calibration, self.site)


@dataclass(frozen=True)
class CalibrationRun:
    id: int
    request_id: int
    calibration: str
    state: CalRunState
    attempt: int
    iteration: int | None
    result: str | None
    created: datetime
    started: datetime | None
    updated: datetime
    finished: datetime | None
    flow_run_id: str | None
    message: str | None
    summary: dict[str, Any] | None = field(default=None)

    @property
    def label(self) -> str:
        return f"calibration run {self.id} ({self.calibration} of request {self.request_id})"


@dataclass(frozen=True)
class Signoff:
    id: int
    calibration_run_id: int
    attempt: int
    decision: SignoffDecision
    actor: str
    comment: str
    at: datetime
    action_id: int


@dataclass(frozen=True)
class Action:
    id: int
    at: datetime
    actor: str
    action: str
    target: str
    outcome: str
    detail: dict[str, Any]
