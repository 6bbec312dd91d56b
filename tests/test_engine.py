"""The engine end to end on real toy files and a real process pool, with a counting calibration.

The counting calibration's payload is a hit count, so every number here can be checked
exactly: grouping of runs, iteration, outputs, provenance, determinism and resume.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from counting import counting

from b2cal.backends.local import LocalBackend
from b2cal.caf.calibration import AlgorithmResult, Calibration
from b2cal.caf.driver import run_calibrations
from b2cal.caf.plan import CalibrationRequest
from b2cal.caf.steps import plan
from b2cal.caf.workspace import Workspace
from b2cal.core.localdb import LocalDatabase, read_database_txt, write_local_database
from b2cal.errors import ArgumentsChanged, InputsChanged

pytestmark = pytest.mark.unit


def request(storage: Path, first: int = 1, last: int = 4, **kw: Any) -> CalibrationRequest:
    return CalibrationRequest(exp=1, first_run=first, last_run=last, storage=storage, **kw)


def run(
    storage: Path, output: Path, calibrations: list[Calibration], workers: int = 2, **kw: Any
) -> dict[str, Any]:
    """Plan and run ``calibrations`` on experiment 1 (runs 1-4 unless ``first``/``last``)."""
    by_name = {c.name: c for c in calibrations}
    workspace = Workspace(output)
    with LocalBackend(workers) as backend:
        plan(workspace, request(storage, **kw), by_name)
        return run_calibrations(workspace, by_name, backend)


def test_low_statistics_run_is_merged_with_the_next(small_storage: Path, tmp_path: Path) -> None:
    outcome = run(small_storage, tmp_path / "out", [counting(minimum=5000)])["Counting"]
    assert outcome.result is AlgorithmResult.OK
    lines = (tmp_path / "out/Counting/outputdb/database.txt").read_text().splitlines()
    assert lines == [
        "dbstore/Counting 1 1,1,1,1",
        "dbstore/Counting 2 1,2,1,2",
        "dbstore/Counting 3 1,3,1,4",
    ]
    db = LocalDatabase(tmp_path / "out/Counting/outputdb")
    assert db.payload("Counting", (1, 4))["runs"] == [3, 4]  # type: ignore[index]
    assert outcome.jobs == 8 and outcome.events == 3 * 1200 + 80


def test_open_ended_last_iov(small_storage: Path, tmp_path: Path) -> None:
    outcome = run(small_storage, tmp_path / "out", [counting(minimum=5000)], open_ended=True)
    assert [str(i) for i in outcome["Counting"].iovs][-1] == "1,3,-1,-1"


def test_outputs_hold_only_final_payloads_and_provenance_beside_them(
    small_storage: Path, tmp_path: Path
) -> None:
    cal = counting(minimum=5000, iterations=2, max_iterations=5)
    outcome = run(small_storage, tmp_path / "out", [cal])["Counting"]
    assert outcome.iterations == 3 and outcome.converged is True
    base = tmp_path / "out/Counting"
    assert sorted(p.name for p in (base / "outputdb").iterdir()) == [
        "database.txt",
        "dbstore_Counting_rev_1.json",
        "dbstore_Counting_rev_2.json",
        "dbstore_Counting_rev_3.json",
    ]
    doc = json.loads((base / "outputdb/dbstore_Counting_rev_1.json").read_text())
    assert doc == {"hits": doc["hits"], "runs": [1], "step": 2}  # final iteration only
    assert sorted(p.name for p in (base / "iterations").iterdir()) == ["0", "1", "2"]
    provenance = json.loads((base / "provenance/dbstore_Counting_rev_1.json").read_text())
    for key in ("b2cal_version", "calibration_run", "input_files_digest", "upstream_payloads"):
        assert key in provenance
    assert provenance["iteration"] == 2
    assert provenance["checksum"] == read_database_txt(base / "outputdb")[0].checksum


def test_iteration_limit_keeps_last_payloads_and_says_not_converged(
    small_storage: Path, tmp_path: Path
) -> None:
    cal = counting(minimum=5000, iterations=10, max_iterations=3)
    outcome = run(small_storage, tmp_path / "out", [cal])["Counting"]
    assert outcome.result is AlgorithmResult.OK
    assert outcome.iterations == 3 and outcome.converged is False
    assert "not converged" in outcome.message
    doc = LocalDatabase(tmp_path / "out/Counting/outputdb").payload("Counting", (1, 1))
    assert doc is not None and doc["step"] == 2


def test_same_inputs_give_bit_identical_payloads(small_storage: Path, tmp_path: Path) -> None:
    run(small_storage, tmp_path / "a", [counting(minimum=5000, max_files_per_job=3)], workers=1)
    run(small_storage, tmp_path / "b", [counting(minimum=5000, max_files_per_job=3)], workers=2)
    a = {p.name: p.read_bytes() for p in (tmp_path / "a/Counting/outputdb").iterdir()}
    b = {p.name: p.read_bytes() for p in (tmp_path / "b/Counting/outputdb").iterdir()}
    assert a == b


def test_rerun_resumes_without_recomputing(small_storage: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run(small_storage, out, [counting(minimum=5000)])
    jobs = sorted((out / "Counting/iterations/0/jobs").glob("*/status.json"))
    stamps = [p.stat().st_mtime_ns for p in jobs]
    # forget the final result and one job: only that job is redone, the others are kept
    (out / "Counting/result.json").unlink()
    (out / "Counting/iterations/0/result.json").unlink()
    jobs[2].unlink()
    outcome = run(small_storage, out, [counting(minimum=5000)])["Counting"]
    assert outcome.result is AlgorithmResult.OK
    after = [p.stat().st_mtime_ns for p in jobs]
    assert after[:2] == stamps[:2] and after[3:] == stamps[3:]
    assert jobs[2].exists()


def test_other_arguments_on_an_existing_output_are_refused(
    small_storage: Path, tmp_path: Path
) -> None:
    workspace = Workspace(tmp_path / "out")
    cals = {"Counting": counting()}
    first = plan(workspace, request(small_storage, last=3), cals)
    again = plan(workspace, request(small_storage, last=3), cals)  # same: resume
    assert again == first
    with pytest.raises(ArgumentsChanged, match="runs: '1-3' then, '1-4' now") as refused:
        plan(workspace, request(small_storage, last=4), cals)
    assert refused.value.differences == {"runs": ("1-3", "1-4")}


def test_bad_files_are_recorded_and_left_out(small_storage: Path, tmp_path: Path) -> None:
    import uproot

    storage = tmp_path / "storage"
    shutil.copytree(small_storage, storage)
    folder = storage / "e0001/r00001/bhabha"
    truncated = folder / "bhabha.e0001.r00001.f00000.root"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    garbage = storage / "e0001/r00002/bhabha/bhabha.e0001.r00002.f00001.root"
    garbage.write_bytes(b"this is not a ROOT file")
    no_branch = storage / "e0001/r00004/bhabha/bhabha.e0001.r00004.f00001.root"
    with uproot.recreate(no_branch) as f:
        f["metadata"] = json.dumps({"experiment": 1, "run": 4, "stream": "bhabha", "nevents": 3})
        f.mktree("events", {"something": "int32"})
        f["events"].extend({"something": [1, 2, 3]})
    outcome = run(storage, tmp_path / "out", [counting(minimum=1000)])["Counting"]
    assert outcome.result is AlgorithmResult.OK
    reasons = {Path(b.path).name: b.reason for b in outcome.bad_files}
    assert set(reasons) == {truncated.name, garbage.name, no_branch.name}
    assert "missing branches: hit_channel" in reasons[no_branch.name]
    assert outcome.events == (6 - 3) * 600 + 2 * 40  # three of the 600-event files are bad


def test_wrong_metadata_is_a_bad_file(small_storage: Path, tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    shutil.copytree(small_storage, storage)
    source = storage / "e0001/r00001/bhabha/bhabha.e0001.r00001.f00000.root"
    shutil.copy(source, storage / "e0001/r00002/bhabha/bhabha.e0001.r00002.f00000.root")
    outcome = run(storage, tmp_path / "out", [counting(minimum=1000)])["Counting"]
    assert [b.reason for b in outcome.bad_files] == [
        "metadata says experiment 1 run 1 stream bhabha, "
        "its path says experiment 1 run 2 stream bhabha"
    ]


def test_all_files_bad_ends_not_enough_data(tmp_path: Path) -> None:
    folder = tmp_path / "storage/e0001/r00001/bhabha"
    folder.mkdir(parents=True)
    (folder / "bhabha.e0001.r00001.f00000.root").write_bytes(b"\0" * 100)
    outcome = run(tmp_path / "storage", tmp_path / "out", [counting()], last=1)["Counting"]
    assert outcome.result is AlgorithmResult.NOT_ENOUGH_DATA
    assert len(outcome.bad_files) == 1


def test_a_crashing_collector_fails_its_calibration_with_the_log_named(
    small_storage: Path, tmp_path: Path
) -> None:
    from counting import Exploding

    cal = counting().model_copy(update={"collector": Exploding()})
    outcome = run(small_storage, tmp_path / "out", [cal])["Counting"]
    assert outcome.result is AlgorithmResult.FAILURE
    assert "collector job 0 failed after 2 attempts" in outcome.message
    assert "job.log" in outcome.message
    log = (tmp_path / "out/Counting/iterations/0/jobs/0000/job.log").read_text()
    assert "collector exploded" in log


def test_dependent_calibration_is_not_run_when_its_dependency_fails(
    small_storage: Path, tmp_path: Path
) -> None:
    base = counting(minimum=10**9)
    dependent = counting().model_copy(update={"name": "Dependent", "depends_on": ("Counting",)})
    outcomes = run(small_storage, tmp_path / "out", [base, dependent])
    assert outcomes["Counting"].result is AlgorithmResult.NOT_ENOUGH_DATA
    assert outcomes["Dependent"].result is AlgorithmResult.FAILURE
    assert "dependency Counting ended NOT_ENOUGH_DATA" in outcomes["Dependent"].message
    assert not (tmp_path / "out/Dependent/iterations").exists()
    assert not (tmp_path / "out/Dependent/result.json").exists()


def test_resume_on_changed_input_files_is_refused(small_storage: Path, tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    shutil.copytree(small_storage, storage)
    out = tmp_path / "out"
    run(storage, out, [counting(minimum=1000)], last=3)
    landed = storage / "e0001/r00003/bhabha/bhabha.e0001.r00003.f00002.root"
    shutil.copy(storage / "e0001/r00003/bhabha/bhabha.e0001.r00003.f00000.root", landed)
    with pytest.raises(InputsChanged, match="other input files of Counting") as refused:
        run(storage, out, [counting(minimum=1000)], last=3)
    assert refused.value.changed == [str(landed)]
    landed.unlink()
    assert run(storage, out, [counting(minimum=1000)], last=3)["Counting"].result.value == "OK"


def test_iterating_at_a_limit_of_one_says_not_converged(
    small_storage: Path, tmp_path: Path
) -> None:
    cal = counting(minimum=1000, iterations=5, max_iterations=1)
    outcome = run(small_storage, tmp_path / "out", [cal])["Counting"]
    assert outcome.result is AlgorithmResult.OK and outcome.converged is False
    assert "not converged after 1 iterations" in outcome.message


def test_ok_without_payloads_is_a_failure(small_storage: Path, tmp_path: Path) -> None:
    from counting import PayloadLess

    cal = counting().model_copy(update={"algorithm": PayloadLess()})
    outcome = run(small_storage, tmp_path / "out", [cal])["Counting"]
    assert outcome.result is AlgorithmResult.FAILURE
    assert outcome.message == "the algorithm ended OK without any payload"


def test_a_dying_worker_fails_its_calibration_with_a_clear_reason(
    small_storage: Path, tmp_path: Path
) -> None:
    from counting import Dying

    cal = counting().model_copy(update={"collector": Dying()})
    outcome = run(small_storage, tmp_path / "out", [cal])["Counting"]
    assert outcome.result is AlgorithmResult.FAILURE
    assert "the worker process died (killed by SIGKILL" in outcome.message


def test_input_databases_are_the_last_links_of_the_chain(
    small_storage: Path, tmp_path: Path
) -> None:
    from b2cal.core.iov import IoV

    given = tmp_path / "given"
    write_local_database(given, [("Counting", IoV(1, 0, -1, -1), {"step": 5})])
    cal = counting(minimum=1000, iterations=7, max_iterations=2)
    outcome = run(small_storage, tmp_path / "out", [cal], input_databases=(given,))["Counting"]
    # iteration 0 starts from the input payload (step 5 -> 6), iteration 1 from its own (-> 7)
    assert outcome.iterations == 2 and outcome.converged is True
    doc = LocalDatabase(tmp_path / "out/Counting/outputdb").payload("Counting", (1, 1))
    assert doc is not None and doc["step"] == 7
    provenance = json.loads(
        (tmp_path / "out/Counting/provenance/dbstore_Counting_rev_1.json").read_text()
    )
    assert [u["name"] for u in provenance["upstream_payloads"]] == ["Counting"]
