"""One calibration's lifecycle (b2cal.caf.lifecycle): the next step read from the workspace at
every point of a run, the loop both drivers take, and the failure policy — the same outcome
in the workspace whoever drove it."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from counting import counting

from b2cal.backends.local import LocalBackend
from b2cal.caf.calibration import AlgorithmResult, Calibration
from b2cal.caf.lifecycle import Step, StepKind, drive, next_step, record_failure
from b2cal.caf.plan import CalibrationRequest
from b2cal.caf.records import CalibrationOutcome
from b2cal.caf.steps import collect, finish, plan, run_algorithm
from b2cal.caf.workspace import Workspace
from b2cal.errors import B2CalError, Interrupted

pytestmark = pytest.mark.unit
C, A, F, D = StepKind.COLLECT, StepKind.ALGORITHM, StepKind.FINISH, StepKind.DONE


def planned(storage: Path, root: Path, cal: Calibration) -> Workspace:
    workspace = Workspace(root)
    request = CalibrationRequest(exp=1, first_run=1, last_run=4, storage=storage)
    plan(workspace, request, {"Counting": cal})
    return workspace


class Recorded:
    """The engine's steps, in this thread, noting what they were asked."""

    def __init__(self, workspace: Workspace, cal: Calibration, backend: LocalBackend) -> None:
        self.workspace, self.cal, self.backend = workspace, cal, backend
        self.asked: list[str] = []

    def collect(self, iteration: int) -> None:
        self.asked.append(f"collect {iteration}")
        collect(self.workspace, self.cal, iteration, self.backend)

    def algorithm(self, iteration: int) -> None:
        self.asked.append(f"algorithm {iteration}")
        run_algorithm(self.workspace, self.cal, iteration)

    def finish(self) -> CalibrationOutcome:
        self.asked.append("finish")
        return finish(self.workspace, self.cal)


def test_the_next_step_is_read_from_the_workspace_at_every_point(
    small_storage: Path, tmp_path: Path
) -> None:
    cal = counting(iterations=1, max_iterations=3)  # asks to iterate once, then OK
    workspace = planned(small_storage, tmp_path / "out", cal)
    area = workspace.calibration("Counting")
    assert next_step(area, 3) == Step(C, 0)
    with LocalBackend(1) as backend:
        collect(workspace, cal, 0, backend)
        assert next_step(area, 3) == Step(C, 0)  # a restart collects again (nothing to do)
        assert next_step(area, 3, collected={0}) == Step(A, 0)
        assert run_algorithm(workspace, cal, 0).result is AlgorithmResult.ITERATE
        assert next_step(area, 3, collected={0}) == Step(C, 1)
        collect(workspace, cal, 1, backend)
        run_algorithm(workspace, cal, 1)
    assert next_step(area, 3) == Step(F)  # iteration 1 said OK: no iteration 2
    finish(workspace, cal)
    assert next_step(area, 3) == Step(D)
    assert str(Step(C, 2)) == "collect 2" and str(Step(F)) == "finish"


def test_drive_takes_the_steps_in_order_and_resumes_where_a_run_stopped(
    small_storage: Path, tmp_path: Path
) -> None:
    cal = counting(iterations=1, max_iterations=3)
    workspace = planned(small_storage, tmp_path / "out", cal)
    area = workspace.calibration("Counting")
    heard: list[str] = []
    with LocalBackend(1) as backend:
        collect(workspace, cal, 0, backend)  # a run that stopped after its first collection
        steps = Recorded(workspace, cal, backend)
        outcome = drive(area, 3, steps, on_step=lambda s: heard.append(str(s)))
        assert outcome.result is AlgorithmResult.OK and outcome.iterations == 2
        assert steps.asked == ["collect 0", "algorithm 0", "collect 1", "algorithm 1", "finish"]
        assert heard == steps.asked
        again = Recorded(workspace, cal, backend)
        assert drive(area, 3, again) == outcome and again.asked == []  # done: nothing taken
        stop = threading.Event()
        stop.set()
        fresh = planned(small_storage, tmp_path / "other", cal)
        with pytest.raises(Interrupted, match="Counting before its collect 0"):
            drive(fresh.calibration("Counting"), 3, Recorded(fresh, cal, backend), stop=stop)


def test_a_failure_leaves_one_outcome_whoever_drove_it(small_storage: Path, tmp_path: Path) -> None:
    workspace = planned(small_storage, tmp_path / "out", counting())
    area = workspace.calibration("Counting")
    said = record_failure(area, B2CalError("collector jobs 3, 4 failed"))
    assert (said.result, said.message) == (AlgorithmResult.FAILURE, "collector jobs 3, 4 failed")
    assert area.outcome() == said
    assert next_step(area, 1) == Step(C, 0)  # a failed calibration is taken up again
    try:
        raise KeyError("bug")
    except KeyError as exc:
        bug = record_failure(area, exc)
    assert bug.message is not None and bug.message.startswith("internal error KeyError")
    assert "Traceback" in area.error_log.read_text()
