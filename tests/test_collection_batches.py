"""A collection in batches, as a flow runs it: the jobs written once, batches of them collected
side by side in threads of one driver, the same payloads as one collection; a thread outside
the driver, and batches of jobs written otherwise, are refused."""

from __future__ import annotations

import contextvars
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from counting import counting

from b2cal.backends.local import LocalBackend
from b2cal.caf.plan import CalibrationRequest
from b2cal.caf.steps import collect, driving, finish, plan, prepare_collection, run_algorithm
from b2cal.caf.workspace import Workspace
from b2cal.errors import B2CalError, CalibrationBusy

pytestmark = pytest.mark.unit


def calibration():  # type: ignore[no-untyped-def]
    return counting(minimum=5000, iterations=1, max_iterations=3, max_files_per_job=1)


def planned(storage: Path, root: Path) -> Workspace:
    workspace = Workspace(root)
    request = CalibrationRequest(exp=1, first_run=1, last_run=4, storage=storage)
    plan(workspace, request, {"Counting": calibration()})
    return workspace


def outputdb(workspace: Workspace) -> dict[str, bytes]:
    folder = workspace.calibration("Counting").outputdb
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_batches_in_threads_of_one_driver_give_the_payloads_of_one_collection(
    small_storage: Path, tmp_path: Path
) -> None:
    whole = planned(small_storage, tmp_path / "whole")
    batched = planned(small_storage, tmp_path / "batched")
    cal = calibration()
    with LocalBackend(2) as backend:
        for iteration in range(2):
            collect(whole, cal, iteration, backend)
            run_algorithm(whole, cal, iteration)
        finish(whole, cal)

        with driving(batched, "Counting"), ThreadPoolExecutor(2) as pool:
            for iteration in range(2):
                todo = prepare_collection(batched, cal, iteration)
                assert todo == list(range(8))  # one file per job, eight files
                batches = [todo[:3], todo[3:6], todo[6:]]
                futures = [
                    pool.submit(
                        contextvars.copy_context().run,  # as Prefect's task runner does
                        collect,
                        batched,
                        cal,
                        iteration,
                        backend,
                        jobs=batch,
                    )
                    for batch in batches
                ]
                for future in futures:
                    future.result()
                assert prepare_collection(batched, cal, iteration) == []  # all done
                run_algorithm(batched, cal, iteration)
            finish(batched, cal)
    assert outputdb(batched) == outputdb(whole)


def test_a_thread_outside_the_driver_is_refused(small_storage: Path, tmp_path: Path) -> None:
    workspace = planned(small_storage, tmp_path / "out")
    cal = calibration()
    refused: list[BaseException] = []

    def outsider() -> None:  # a thread of its own context: not the driver's
        try:
            prepare_collection(workspace, cal, 0)
        except CalibrationBusy as exc:
            refused.append(exc)

    with driving(workspace, "Counting"):
        thread = threading.Thread(target=outsider)
        thread.start()
        thread.join()
    assert len(refused) == 1
    assert prepare_collection(workspace, cal, 0) == list(range(8))  # free once it let go


def test_a_batch_of_jobs_written_otherwise_is_refused(small_storage: Path, tmp_path: Path) -> None:
    workspace = planned(small_storage, tmp_path / "out")
    cal = calibration()
    with LocalBackend(1) as backend:
        with pytest.raises(B2CalError, match=r"collector jobs \[0, 1\] are not prepared"):
            collect(workspace, cal, 0, backend, jobs=[0, 1])  # nothing written yet
        todo = prepare_collection(workspace, cal, 0)
        with pytest.raises(B2CalError, match=r"collector jobs \[8\] are not prepared"):
            collect(workspace, cal, 0, backend, jobs=[8])
        collect(workspace, cal, 0, backend, jobs=todo[:2])
    jobs = workspace.calibration("Counting").iteration(0).jobs()
    assert [job.done for job in jobs] == [True, True] + [False] * 6
    assert prepare_collection(workspace, cal, 0) == list(range(2, 8))
