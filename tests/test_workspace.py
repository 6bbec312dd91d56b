"""The workspace: records written whole and read back, job folders, claims, and locks."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from pathlib import Path

import pytest

from b2cal.caf.calibration import AlgorithmResult
from b2cal.caf.records import (
    BadFile,
    CalibrationOutcome,
    ChainLink,
    IterationResult,
    JobSpec,
    JobStatus,
    PayloadRef,
    RunRecord,
)
from b2cal.caf.workspace import Workspace
from b2cal.catalog.inputs import FileStamp, InputFile, changed_files
from b2cal.core.iov import IoV
from b2cal.errors import (
    ArgumentsChanged,
    B2CalError,
    CalibrationBusy,
    InputsChanged,
    WorkspaceError,
)

pytestmark = pytest.mark.unit


def run_record(**arguments: object) -> RunRecord:
    return RunRecord(
        arguments=dict(arguments),
        calibration_run="abc",
        calibrations=["A"],
        exp=1,
        first_run=1,
        last_run=4,
        open_ended=False,
    )


def test_records_round_trip_through_their_files(tmp_path: Path) -> None:
    area = Workspace(tmp_path).calibration("A").iteration(0)
    file = InputFile(exp=1, run=2, stream="bhabha", path=tmp_path / "f.root")
    spec = JobSpec(
        calibration="A",
        iteration=0,
        collector=tmp_path / "c.pkl",
        collector_digest="d",
        chain=[ChainLink(path=tmp_path / "db", digest="x")],
        files=[file],
    )
    job = area.job(3)
    job.write_spec(spec)
    assert job.spec() == spec and job.root.name == "0003"
    status = JobStatus(state="done", events=5, bad_files=[BadFile(path="p", reason="r")])
    job.write_status(status)
    assert job.status() == status and not job.done  # done, but with which spec?
    status.spec_digest = spec.digest()
    job.write_status(status)
    assert job.status() == status and job.done
    result = IterationResult(
        iteration=0,
        result=AlgorithmResult.ITERATE,
        payloads=[PayloadRef(name="A", iov=IoV(1, 2, -1, -1))],
    )
    area.write_result(result)
    assert area.result() == result
    assert '"iov": "1,2,-1,-1"' in (area.root / "result.json").read_text()  # database.txt form
    outcome = CalibrationOutcome(calibration="A", result=AlgorithmResult.OK, iovs=[IoV(1, 2, 1, 4)])
    Workspace(tmp_path).calibration("A").write_outcome(outcome)
    assert Workspace(tmp_path).calibration("A").outcome() == outcome


def test_a_damaged_record_is_a_clear_error(tmp_path: Path) -> None:
    job = Workspace(tmp_path).calibration("A").iteration(0).job(0)
    job.root.mkdir(parents=True)
    (job.root / "status.json").write_text('{"state": "half-writ')
    with pytest.raises(B2CalError, match=r"status\.json is not a valid b2cal record"):
        job.status()


def test_a_changed_spec_wipes_the_job_and_an_unchanged_one_keeps_it(tmp_path: Path) -> None:
    job = Workspace(tmp_path).calibration("A").iteration(0).job(0)
    spec = JobSpec(
        calibration="A", iteration=0, collector=tmp_path, collector_digest="1", chain=[], files=[]
    )
    job.write_spec(spec)
    job.write_status(JobStatus(state="done", spec_digest=spec.digest()))
    job.write_spec(spec)
    assert job.done  # same plan: the finished job is kept
    job.write_spec(spec.model_copy(update={"collector_digest": "2"}))
    assert job.status() is None and job.spec() is not None  # another plan: redone


def test_claim_records_once_and_refuses_other_arguments_or_foreign_folders(
    tmp_path: Path,
) -> None:
    workspace = Workspace(tmp_path / "out")
    first = workspace.claim(run_record(runs="1-4"))
    assert workspace.claim(run_record(runs="1-4")).calibration_run == first.calibration_run
    with pytest.raises(ArgumentsChanged) as refused:
        workspace.claim(run_record(runs="1-5"))
    assert refused.value.differences == {"runs": ("1-4", "1-5")}
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(WorkspaceError, match="not empty and was not made by b2cal"):
        Workspace(foreign).claim(run_record())
    (tmp_path / "afile").write_text("x")
    with pytest.raises(WorkspaceError, match="is a file, not a folder"):
        Workspace(tmp_path / "afile").claim(run_record())
    with pytest.raises(WorkspaceError, match="is not the output of a b2cal calibration run"):
        Workspace(foreign).run_record()


def _hold(output: str, name: str, ready: object, release: object) -> None:
    with Workspace(Path(output)).calibration(name).lock():
        ready.set()  # type: ignore[attr-defined]
        release.wait(30)  # type: ignore[attr-defined]


def test_locks_are_per_calibration_reentrant_and_exclusive_between_processes(
    tmp_path: Path,
) -> None:
    workspace = Workspace(tmp_path)
    context = multiprocessing.get_context("spawn")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold, args=(str(tmp_path), "A", ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        assert workspace.calibration("A").is_running()
        # another driver of the same calibration is refused
        with pytest.raises(CalibrationBusy) as busy, workspace.calibration("A").lock():
            pass
        assert busy.value.calibration == "A"
        with workspace.calibration("B").lock(), workspace.calibration("B").lock():
            assert workspace.calibration("B").is_running()  # other calibrations: not blocked
    finally:
        release.set()
        holder.join(30)
    assert not workspace.calibration("A").is_running()
    with workspace.calibration("A").lock():  # the holder is gone: free again
        pass


def test_changed_inputs_are_named_up_to_five(tmp_path: Path) -> None:
    files = [tmp_path / f"f{i}.root" for i in range(8)]
    for file in files:
        file.write_bytes(b"x")
    before = [FileStamp.of(f) for f in files]
    files[0].write_bytes(b"xy")  # size
    os.utime(files[1], ns=(time.time_ns(), time.time_ns() + 10**9))  # modification time
    files[2].unlink()
    files[2].write_bytes(b"x")  # same size and maybe time, another inode
    after = [FileStamp.of(f) for f in files]
    assert changed_files(before, after)[:2] == [str(files[0]), str(files[1])]
    assert str(files[2]) in changed_files(before, after)
    many = InputsChanged(tmp_path, "A", [f"f{i}" for i in range(8)])
    assert "f0, f1, f2, f3, f4 and 3 more changed" in str(many)
    assert many.changed == [f"f{i}" for i in range(8)]


def test_another_thread_of_the_process_is_refused_like_another_process(tmp_path: Path) -> None:
    area = Workspace(tmp_path).calibration("A")
    refused: list[BaseException] = []

    def second_driver() -> None:
        try:
            with area.lock():
                pass
        except CalibrationBusy as exc:
            refused.append(exc)

    with area.lock():
        thread = threading.Thread(target=second_driver)
        thread.start()
        thread.join(30)
    assert len(refused) == 1
    with area.lock():  # released: the thread that held it is done with it
        pass


def test_a_rerun_changes_nothing_while_a_dependant_is_busy(
    small_storage: Path, tmp_path: Path
) -> None:
    from counting import counting

    from b2cal.backends.local import LocalBackend
    from b2cal.caf.driver import run_calibrations
    from b2cal.caf.plan import CalibrationRequest
    from b2cal.caf.steps import plan

    base = counting(minimum=5000)
    child = counting().model_copy(update={"name": "Child", "depends_on": ("Counting",)})
    cals = {"Counting": base, "Child": child}
    workspace = Workspace(tmp_path / "out")
    request = CalibrationRequest(exp=1, first_run=1, last_run=4, storage=small_storage)
    with LocalBackend(2) as backend:
        plan(workspace, request, cals)
        run_calibrations(workspace, cals, backend)
    outputdb = workspace.calibration("Counting").outputdb
    before = sorted(p.name for p in outputdb.iterdir())
    context = multiprocessing.get_context("spawn")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold, args=(str(workspace.root), "Child", ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(CalibrationBusy, match="Child is being run"):
            plan(workspace, request, cals, rerun=["Counting"])
    finally:
        release.set()
        holder.join(30)
    assert sorted(p.name for p in outputdb.iterdir()) == before  # nothing was forgotten
    assert workspace.calibration("Counting").outcome() is not None
    made = plan(workspace, request, cals, rerun=["Counting"])
    assert made.rerun == ["Counting", "Child"]
