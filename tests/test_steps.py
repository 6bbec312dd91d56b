"""The engine's steps, each run alone in a fresh process (as Prefect tasks will run them), give
the same payloads as one `caf run`; steps are idempotent and refuse to run out of order."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from counting import counting

from b2cal.backends.local import LocalBackend
from b2cal.caf.driver import run_calibrations
from b2cal.caf.plan import CalibrationRequest
from b2cal.caf.steps import collect, finish, plan, run_algorithm
from b2cal.caf.workspace import Workspace
from b2cal.errors import B2CalError

pytestmark = pytest.mark.unit

#: One step, in a process of its own: the calibration is rebuilt there, as a flow task would
#: load it from the registry.
STEP = """
import sys
from pathlib import Path
from counting import counting
from b2cal.backends.local import LocalBackend
from b2cal.caf.plan import CalibrationRequest
from b2cal.caf import steps
from b2cal.caf.workspace import Workspace

step, output, storage = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
iteration = int(sys.argv[4])
calibration = counting(minimum=5000, iterations=1, max_iterations=3, max_files_per_job=3)
workspace = Workspace(output)
if step == "plan":
    request = CalibrationRequest(exp=1, first_run=1, last_run=4, storage=storage)
    steps.plan(workspace, request, {"Counting": calibration})
elif step == "collect":
    with LocalBackend(1) as backend:
        steps.collect(workspace, calibration, iteration, backend)
elif step == "run_algorithm":
    print(steps.run_algorithm(workspace, calibration, iteration).result.value)
else:
    print(steps.finish(workspace, calibration).result.value)
"""


def calibration():  # type: ignore[no-untyped-def]
    return counting(minimum=5000, iterations=1, max_iterations=3, max_files_per_job=3)


def step(name: str, output: Path, storage: Path, iteration: int = 0) -> str:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent))
    result = subprocess.run(
        [sys.executable, "-c", STEP, name, str(output), str(storage), str(iteration)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def outputdb(output: Path) -> dict[str, bytes]:
    folder = Workspace(output).calibration("Counting").outputdb
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_each_step_in_a_fresh_process_gives_what_one_run_gives(
    small_storage: Path, tmp_path: Path
) -> None:
    stepped = tmp_path / "stepped"
    step("plan", stepped, small_storage)
    step("collect", stepped, small_storage, 0)
    assert step("run_algorithm", stepped, small_storage, 0) == "ITERATE"
    step("collect", stepped, small_storage, 1)
    assert step("run_algorithm", stepped, small_storage, 1) == "OK"
    assert step("finish", stepped, small_storage) == "OK"

    whole = Workspace(tmp_path / "whole")
    request = CalibrationRequest(exp=1, first_run=1, last_run=4, storage=small_storage)
    with LocalBackend(2) as backend:
        plan(whole, request, {"Counting": calibration()})
        outcome = run_calibrations(whole, {"Counting": calibration()}, backend)["Counting"]
    assert outcome.iterations == 2 and outcome.converged is True
    assert outputdb(stepped) == outputdb(whole.root)  # bit-identical payloads


def test_steps_are_idempotent_and_in_order(small_storage: Path, tmp_path: Path) -> None:
    workspace = Workspace(tmp_path / "out")
    cal = calibration()
    request = CalibrationRequest(exp=1, first_run=1, last_run=4, storage=small_storage)
    plan(workspace, request, {"Counting": cal})
    with pytest.raises(B2CalError, match=r"not collected as planned now .*: collect first"):
        run_algorithm(workspace, cal, 0)
    with pytest.raises(B2CalError, match="no finished iteration"):
        finish(workspace, cal)
    with LocalBackend(1) as backend:
        with pytest.raises(B2CalError, match="iteration 0 has not asked to iterate"):
            collect(workspace, cal, 1, backend)
        collect(workspace, cal, 0, backend)
        jobs = workspace.calibration("Counting").iteration(0).jobs()
        stamps = [job.root.joinpath("status.json").stat().st_mtime_ns for job in jobs]
        collect(workspace, cal, 0, backend)  # nothing left to do
        assert [j.root.joinpath("status.json").stat().st_mtime_ns for j in jobs] == stamps
        first = run_algorithm(workspace, cal, 0)
        result = workspace.calibration("Counting").iteration(0).root / "result.json"
        stamp = result.stat().st_mtime_ns
        assert run_algorithm(workspace, cal, 0) == first
        assert result.stat().st_mtime_ns == stamp  # recorded, not recomputed
        with pytest.raises(B2CalError, match="asked to iterate: run iteration 1 before"):
            finish(workspace, cal)


def test_a_step_killed_before_its_record_is_done_again_with_the_same_result(
    small_storage: Path, tmp_path: Path
) -> None:
    """A kill between a step's files and its record (written last) leaves the step undone;
    doing it again gives exactly what it would have given."""
    workspace = Workspace(tmp_path / "out")
    cal = counting(minimum=5000)
    request = CalibrationRequest(exp=1, first_run=1, last_run=4, storage=small_storage)
    plan(workspace, request, {"Counting": cal})
    area = workspace.calibration("Counting")
    with LocalBackend(1) as backend:
        collect(workspace, cal, 0, backend)
    first = run_algorithm(workspace, cal, 0)
    (area.iteration(0).root / "result.json").unlink()  # killed after localdb/, before this
    again = run_algorithm(workspace, cal, 0)
    assert again.computed() == first.computed()
    outcome = finish(workspace, cal)
    payloads = {p.name: p.read_bytes() for p in area.outputdb.iterdir()}
    (area.root / "result.json").unlink()  # killed after outputdb/, before the outcome
    assert finish(workspace, cal) == outcome
    assert {p.name: p.read_bytes() for p in area.outputdb.iterdir()} == payloads


def test_steps_refuse_stale_collections_and_other_calibrations(
    small_storage: Path, tmp_path: Path
) -> None:
    workspace = Workspace(tmp_path / "out")
    cal = counting(minimum=5000)
    request = CalibrationRequest(exp=1, first_run=1, last_run=4, storage=small_storage)
    plan(workspace, request, {"Counting": cal})
    with LocalBackend(1) as backend:
        collect(workspace, cal, 0, backend)
    other = counting(minimum=5000, max_files_per_job=2)
    with pytest.raises(B2CalError, match=r"not the calibration planned .*max_files_per_job"):
        run_algorithm(workspace, other, 0)
    # replanned with another split (a rerun) but not collected again: the old outputs are stale
    plan(workspace, request, {"Counting": other}, rerun=["Counting"])
    with pytest.raises(B2CalError, match="not collected as planned now"):
        run_algorithm(workspace, other, 0)


def test_a_plan_lists_runs_without_files_and_refuses_a_calibration_without_any(
    small_storage: Path, tmp_path: Path
) -> None:
    workspace = Workspace(tmp_path / "out")
    request = CalibrationRequest(exp=1, first_run=2, last_run=6, storage=small_storage)
    made = plan(workspace, request, {"Counting": calibration()})
    assert made.calibrations["Counting"].runs_without_files == [5, 6]
    assert made.calibrations["Counting"].job_files == [3, 3]
    record = json.loads((workspace.root / "Counting/calibration.json").read_text())
    assert record["runs_without_files"] == [5, 6]
    empty = CalibrationRequest(exp=1, first_run=50, last_run=60, storage=small_storage)
    with pytest.raises(B2CalError, match="no input files for Counting"):
        plan(Workspace(tmp_path / "other"), empty, {"Counting": calibration()})
    assert not (tmp_path / "other").exists()


def test_a_step_in_another_process_loads_the_calibration_as_planned(
    small_storage: Path, tmp_path: Path
) -> None:
    """What a flow task does: the registered plugin with the output's recorded config."""
    from b2cal.caf.config import configure
    from b2cal.caf.plan import fingerprint
    from b2cal.caf.registry import load
    from b2cal.caf.steps import load_calibration

    section = {"max_files_per_job": 3, "settings": {"min_peak_hits": 60}}
    configured = configure(load("ChannelT0"), section, "test.toml")
    workspace = Workspace(tmp_path / "out")
    request = CalibrationRequest(exp=1, first_run=1, last_run=4, storage=small_storage)
    plan(workspace, request, {"ChannelT0": configured}, {"ChannelT0": section})
    loaded = load_calibration(workspace, "ChannelT0")
    assert loaded.max_files_per_job == 3 and loaded.settings is not None
    assert loaded.settings.model_dump()["min_peak_hits"] == 60
    assert fingerprint(loaded) == workspace.calibration("ChannelT0").record().effective
    assert fingerprint(load("ChannelT0")) != fingerprint(loaded)  # the plain plugin is not it
