"""Planning a calibration run: which calibrations in which order, on which files, in which jobs.

:func:`make_plan` is pure (it only lists files): ``caf run --dry-run`` prints its result and
creates nothing. :func:`record_plan` makes the plan the workspace's, or checks that it is the
same as the one recorded (resume): same arguments, same configuration per calibration, same
input files (by size, modification time and inode).
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from b2cal.caf.calibration import Calibration
from b2cal.caf.collection import collector_digest
from b2cal.caf.config import Overrides
from b2cal.caf.graph import topological_order, upstream
from b2cal.caf.jobs import split_files
from b2cal.caf.records import CalibrationRecord, RunRecord
from b2cal.caf.strategies import RunRange
from b2cal.caf.workspace import Workspace
from b2cal.catalog.inputs import FileStamp, InputFile, changed_files, read_file_list
from b2cal.catalog.storage import find_files
from b2cal.core.iov import ExpRun
from b2cal.errors import ArgumentsChanged, B2CalError, InputsChanged, WorkspaceError

log = logging.getLogger("b2cal.caf")


class CalibrationRequest(BaseModel):
    """What to calibrate: runs of one experiment, from a storage element or a list of files."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    exp: int = Field(ge=0)
    first_run: int = Field(ge=0)
    last_run: int = Field(ge=0)
    storage: Path | None = None
    files_from: Path | None = None
    open_ended: bool = False
    input_databases: tuple[Path, ...] = ()

    @model_validator(mode="after")
    def _one_source_and_a_range(self) -> CalibrationRequest:
        if (self.storage is None) == (self.files_from is None):
            raise ValueError("give exactly one of storage and files_from")
        if self.last_run < self.first_run:
            raise ValueError(f"run range {self.first_run}-{self.last_run} ends before it starts")
        return self

    @property
    def requested(self) -> RunRange:
        return RunRange(ExpRun(self.exp, self.first_run), ExpRun(self.exp, self.last_run))

    @property
    def runs(self) -> range:
        return range(self.first_run, self.last_run + 1)

    def source(self) -> str:
        return f"storage {self.storage}" if self.storage else f"--files-from {self.files_from}"

    def arguments(self, calibrations: Sequence[str]) -> dict[str, Any]:
        """The run's identity: what a resume must give again (not the number of workers)."""
        source: dict[str, Any] = (
            {"storage": str(self.storage)}
            if self.storage is not None
            else {"files_from": str(self.files_from)}
        )
        return {
            **source,
            "exp": self.exp,
            "runs": f"{self.first_run}-{self.last_run}",
            "calibrations": sorted(calibrations),
            "open_ended": self.open_ended,
            "input_databases": [str(d) for d in self.input_databases],
        }


class CalibrationPlan(BaseModel):
    """One calibration of a plan."""

    name: str
    depends_on: list[str]
    upstream: list[str]
    #: Upstream calibrations computed elsewhere: where their payloads are (None: skipped).
    elsewhere: dict[str, Path | None] = {}
    streams: list[str]
    strategy: str
    max_iterations: int
    files: list[InputFile]
    #: How many files each collector job gets, in job order.
    job_files: list[int]
    runs_without_files: list[int]
    config: dict[str, Any]
    #: :func:`fingerprint` of the calibration as planned.
    effective: dict[str, Any]


class Plan(BaseModel):
    request: CalibrationRequest
    #: The calibrations this workspace computes, dependencies first.
    order: list[str]
    calibrations: dict[str, CalibrationPlan]
    #: Calibrations of the request computed elsewhere (another site's workspace), or skipped
    #: (None), that computed ones depend on: where their payloads are.
    elsewhere: dict[str, Path | None] = {}
    #: Listed files (``--files-from``) outside the requested experiment and runs.
    left_out: int = 0
    #: Calibrations recomputed by a rerun, dependants included (set when the plan is recorded).
    rerun: list[str] = []

    def arguments(self) -> dict[str, Any]:
        """The run's identity: every calibration of the request, wherever it is computed (a
        calibration skipped later changes where its dependants look, not the identity)."""
        return self.request.arguments([*self.order, *self.elsewhere])


def make_plan(
    request: CalibrationRequest,
    calibrations: Mapping[str, Calibration],
    overrides: Overrides | None = None,
    elsewhere: Mapping[str, Path | None] | None = None,
) -> Plan:
    """The plan of running ``calibrations`` (configured already) for ``request``.

    ``elsewhere`` names calibrations among them that this workspace does not compute: their
    payloads are in the local database given (computed by another workspace, e.g. at another
    site), or nowhere (None: skipped, so their dependants find what the input databases
    hold). Input files are listed once for the calibrations computed. A calibration without
    any input file is refused; requested runs without files are noted (they are warned
    about, not refused).
    """
    outside = dict(elsewhere or {})
    unknown = sorted(set(outside) - set(calibrations))
    if unknown:
        raise B2CalError(f"calibrations computed elsewhere are not planned: {', '.join(unknown)}")
    order = [name for name in topological_order(calibrations) if name not in outside]
    if not order:
        raise B2CalError("every calibration is computed elsewhere or skipped: nothing to plan")
    streams = sorted({s for n in order for s in calibrations[n].input_streams})
    listed, left_out = _input_files(request, streams)
    plans = {}
    for name in order:
        calibration = calibrations[name]
        above = upstream(name, calibrations)
        files = [f for f in listed if f.stream in calibration.input_streams]
        if not files:
            raise B2CalError(
                f"no input files for {name} (streams {','.join(calibration.input_streams)}) in "
                f"experiment {request.exp} runs {request.first_run}-{request.last_run} under "
                f"{request.storage if request.storage else request.files_from}"
            )
        with_files = {f.run for f in files}
        plans[name] = CalibrationPlan(
            name=name,
            depends_on=list(calibration.depends_on),
            upstream=above,
            elsewhere={dep: outside[dep] for dep in above if dep in outside},
            streams=list(calibration.input_streams),
            strategy=calibration.strategy.name.value,
            max_iterations=calibration.max_iterations,
            files=files,
            job_files=[
                len(group)
                for group in split_files(files, calibration.max_files_per_job, calibration.max_jobs)
            ],
            runs_without_files=[r for r in request.runs if r not in with_files],
            config=dict((overrides or {}).get(name, {})),
            effective=fingerprint(calibration),
        )
    return Plan(
        request=request,
        order=order,
        calibrations=plans,
        elsewhere=outside,
        left_out=left_out,
    )


def _input_files(
    request: CalibrationRequest, streams: Sequence[str]
) -> tuple[list[InputFile], int]:
    if request.storage is not None:
        return find_files(request.storage, request.exp, request.runs, streams), 0
    assert request.files_from is not None
    listed = read_file_list(request.files_from)
    inside = [
        f for f in listed if f.exp == request.exp and f.run in request.runs and f.stream in streams
    ]
    return inside, len(listed) - len(inside)


def fingerprint(calibration: Calibration) -> dict[str, Any]:
    """What a calibration computes with: its configuration as given to the engine, and a digest
    of its collector (class, code, the settings it reads). Recorded at plan time; a step given a
    calibration with another fingerprint refuses to run."""
    settings = calibration.settings
    return {
        "max_iterations": calibration.max_iterations,
        "max_files_per_job": calibration.max_files_per_job,
        "max_jobs": calibration.max_jobs,
        "strategy": calibration.strategy.model_dump(mode="json"),
        "settings": settings.model_dump(mode="json") if settings is not None else None,
        "collector": collector_digest(calibration.collector, settings),
    }


def with_dependants(plan: Plan, names: Collection[str]) -> list[str]:
    """``names`` and every calibration of the plan that depends on one of them, in order."""
    found = set(names)
    for name in plan.order:
        if any(dep in found for dep in plan.calibrations[name].depends_on):
            found.add(name)
    return [name for name in plan.order if name in found]


def check_plan(workspace: Workspace, plan: Plan, rerun: Collection[str] = ()) -> list[str]:
    """Refuse ``plan`` on an existing workspace unless it is the recorded one (resume) — same
    arguments, same configuration and calibrations except those recomputed, same input files —
    and return the calibrations a rerun recomputes (``rerun`` and their dependants). Reads
    only: ``caf run --dry-run`` says what a run would do."""
    return _checked(workspace, plan, rerun)[0]


_Records = dict[str, CalibrationRecord]


def _checked(
    workspace: Workspace, plan: Plan, rerun: Collection[str]
) -> tuple[list[str], _Records, dict[str, CalibrationRecord | None]]:
    """:func:`check_plan`, and the records as they would be written and as they are."""
    unknown = sorted(set(rerun) - set(plan.order))
    if unknown:
        raise WorkspaceError(
            workspace.root, f"has no calibration {', '.join(unknown)} to rerun (it has "
            f"{', '.join(plan.order)})",
        )  # fmt: skip
    if workspace.exists():
        workspace.check_arguments(workspace.run_record(), plan.arguments())
    again = with_dependants(plan, rerun)
    new = _records(plan)
    old = {name: _recorded(workspace, name) for name in plan.order}
    differences: dict[str, tuple[Any, Any]] = {}
    for name in plan.order:
        before, now = old[name], new[name]
        if before is None:
            continue
        changed = changed_files(before.stamps, now.stamps)
        replaced = {s.path for s in before.stamps} == {s.path for s in now.stamps}
        if changed and not (replaced and name in again):  # a rerun takes replaced files
            raise InputsChanged(workspace.root, name, changed, replaced)
        if name in again:
            continue
        if before.elsewhere != now.elsewhere:
            differences[f"{name} (where its dependencies' payloads are)"] = (
                _sources(before.elsewhere), _sources(now.elsewhere),
            )  # fmt: skip
        config = _config_differences(name, before.config, now.config)
        differences.update(config)
        if not config and before.effective != now.effective:
            keys = ", ".join(
                k for k in now.effective if before.effective.get(k) != now.effective[k]
            )
            differences[f"{name} ({keys})"] = ("as planned", "changed")
    if differences:
        raise ArgumentsChanged(workspace.root, differences, rerun_hint=True)
    return again, new, old


def _sources(elsewhere: Mapping[str, Path | None]) -> str:
    if not elsewhere:
        return "computed here"
    return ", ".join(
        f"{name} {'skipped' if path is None else f'from {path}'}"
        for name, path in sorted(elsewhere.items())
    )


def _config_differences(
    name: str, before: dict[str, Any], now: dict[str, Any]
) -> dict[str, tuple[Any, Any]]:
    """Each setting of a --config section that differs, as ``config of Cal.key.sub``."""
    found: dict[str, tuple[Any, Any]] = {}

    def walk(prefix: str, old: Any, new: Any) -> None:
        if isinstance(old, dict) and isinstance(new, dict):
            for key in sorted(set(old) | set(new)):
                walk(f"{prefix}.{key}", old.get(key), new.get(key))
        elif old != new:
            found[f"config of {prefix}"] = (old, new)

    walk(name, before, now)
    return found


def record_plan(workspace: Workspace, plan: Plan, rerun: Collection[str] = ()) -> list[str]:
    """Make ``plan`` the workspace's, or check that it is the recorded one (resume).

    ``rerun`` names calibrations to compute again (``caf run --rerun``): they and their
    dependants have their results forgotten (collector jobs stay, so unchanged ones are
    reused), and their configuration may differ from the recorded one. Anything else that
    differs is refused (:func:`check_plan`). Everything is checked, and the calibrations to
    write are locked, before anything changes. Returns the calibrations to recompute.
    """
    again, new, old = _checked(workspace, plan, rerun)
    request = plan.request
    workspace.claim(
        RunRecord(
            arguments=plan.arguments(),
            calibration_run=uuid.uuid4().hex[:12],
            calibrations=plan.order,
            exp=request.exp,
            first_run=request.first_run,
            last_run=request.last_run,
            open_ended=request.open_ended,
        )
    )
    writes = [name for name in plan.order if old[name] is None or name in again]
    with contextlib.ExitStack() as locks:
        for name in writes:
            locks.enter_context(workspace.calibration(name).lock())
        for name in writes:
            area = workspace.calibration(name)
            if old[name] is not None:
                area.forget_results(keep_iterations=plan.calibrations[name].max_iterations)
                log.info("%s: results forgotten for a rerun (config %s)", name, new[name].config)
            area.write_record(new[name])
    return again


def _records(plan: Plan) -> _Records:
    """The calibrations' records of ``plan``; each input file is stamped once, however many
    calibrations read it."""
    stamps: dict[Path, FileStamp] = {}
    records = {}
    for name in plan.order:
        calibration = plan.calibrations[name]
        for file in calibration.files:
            if file.path not in stamps:
                stamps[file.path] = FileStamp.of(file.path)
        records[name] = CalibrationRecord(
            name=name,
            config=calibration.config,
            effective=calibration.effective,
            upstream=calibration.upstream,
            elsewhere=calibration.elsewhere,
            input_databases=list(plan.request.input_databases),
            files=calibration.files,
            stamps=[stamps[f.path] for f in calibration.files],
            runs_without_files=calibration.runs_without_files,
        )
    return records


def _recorded(workspace: Workspace, name: str) -> CalibrationRecord | None:
    area = workspace.calibration(name)
    return area.record() if area.has_record() else None
