"""A workspace that computes only some calibrations of a request: the others are computed
elsewhere (another site's workspace: their payloads arrive as a local database) or skipped
(their dependants use what the input databases hold). What the flows need for calibrations
placed at other sites and for SKIPPED."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from b2cal.backends.local import LocalBackend
from b2cal.caf.calibration import AlgorithmResult
from b2cal.caf.plan import CalibrationRequest
from b2cal.caf.registry import load
from b2cal.caf.steps import collect, finish, plan, run_algorithm
from b2cal.caf.workspace import Workspace
from b2cal.errors import ArgumentsChanged, B2CalError

pytestmark = pytest.mark.unit


def request(storage: Path, *inputs: Path) -> CalibrationRequest:
    return CalibrationRequest(
        exp=1, first_run=1, last_run=4, storage=storage, input_databases=tuple(inputs)
    )


def drive(workspace: Workspace, names: list[str], backend: LocalBackend) -> None:
    """Every step of ``names`` in order, as a flow runs them."""
    for name in names:
        calibration = load(name)
        for iteration in range(calibration.max_iterations):
            collect(workspace, calibration, iteration, backend)
            if (
                run_algorithm(workspace, calibration, iteration).result
                is not AlgorithmResult.ITERATE
            ):
                break
        assert finish(workspace, calibration).result is AlgorithmResult.OK


def payloads(workspace: Workspace, name: str) -> dict[str, bytes]:
    folder = workspace.calibration(name).outputdb
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def together(small_storage: Path, tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """ChannelT0 and ChannelGain computed in one workspace: what the others must match."""
    workspace = Workspace(tmp_path_factory.mktemp("together") / "out")
    calibrations = {name: load(name) for name in ("ChannelT0", "ChannelGain")}
    with LocalBackend(2) as backend:
        plan(workspace, request(small_storage), calibrations)
        drive(workspace, ["ChannelT0", "ChannelGain"], backend)
    return workspace


def test_a_dependency_computed_elsewhere_gives_the_same_payloads(
    together: Workspace, small_storage: Path, tmp_path: Path
) -> None:
    arrived = tmp_path / "upstream" / "ChannelT0"  # as exported from a staging tag
    workspace = Workspace(tmp_path / "out")
    calibrations = {name: load(name) for name in ("ChannelT0", "ChannelGain")}
    made = plan(workspace, request(small_storage), calibrations, elsewhere={"ChannelT0": arrived})
    assert made.order == ["ChannelGain"]
    assert made.arguments()["calibrations"] == ["ChannelGain", "ChannelT0"]
    assert not workspace.calibration("ChannelT0").has_record()
    gain = load("ChannelGain")
    with LocalBackend(2) as backend:
        # its payloads have not arrived yet: refused, saying where they are awaited
        with pytest.raises(B2CalError, match=r"needs the payloads of ChannelT0 .* holds no"):
            collect(workspace, gain, 0, backend)
        shutil.copytree(together.calibration("ChannelT0").outputdb, arrived)
        drive(workspace, ["ChannelGain"], backend)
    assert payloads(workspace, "ChannelGain") == payloads(together, "ChannelGain")


def test_a_skipped_dependency_leaves_its_dependants_to_the_input_databases(
    together: Workspace, small_storage: Path, tmp_path: Path
) -> None:
    calibrations = {name: load(name) for name in ("ChannelT0", "ChannelGain")}
    # skipped, and the input databases hold no ChannelT0: the dependant's jobs say so
    bare = Workspace(tmp_path / "bare")
    plan(bare, request(small_storage), calibrations, elsewhere={"ChannelT0": None})
    with (
        LocalBackend(1, retries=0) as backend,
        pytest.raises(B2CalError, match="needs the ChannelT0 payload"),
    ):
        collect(bare, load("ChannelGain"), 0, backend)
    # skipped, with an input database that holds ChannelT0 payloads: those are used
    running = tmp_path / "running"
    shutil.copytree(together.calibration("ChannelT0").outputdb, running)
    workspace = Workspace(tmp_path / "out")
    plan(workspace, request(small_storage, running), calibrations, elsewhere={"ChannelT0": None})
    with LocalBackend(2) as backend:
        drive(workspace, ["ChannelGain"], backend)
    assert payloads(workspace, "ChannelGain") == payloads(together, "ChannelGain")


def test_where_dependencies_come_from_changes_only_with_a_rerun(
    small_storage: Path, tmp_path: Path
) -> None:
    calibrations = {name: load(name) for name in ("ChannelT0", "ChannelGain")}
    workspace = Workspace(tmp_path / "out")
    plan(workspace, request(small_storage), calibrations)
    with pytest.raises(ArgumentsChanged, match="where its dependencies' payloads are"):
        plan(workspace, request(small_storage), calibrations, elsewhere={"ChannelT0": None})
    made = plan(
        workspace,
        request(small_storage),
        calibrations,
        elsewhere={"ChannelT0": None},
        rerun=["ChannelGain"],
    )
    assert made.rerun == ["ChannelGain"] and made.order == ["ChannelGain"]
    record = workspace.calibration("ChannelGain").record()
    assert record.elsewhere == {"ChannelT0": None}
    with pytest.raises(B2CalError, match="nothing to plan"):
        plan(workspace, request(small_storage), calibrations,
             elsewhere={"ChannelT0": None, "ChannelGain": None})  # fmt: skip
    with pytest.raises(B2CalError, match="not planned: Nope"):
        plan(workspace, request(small_storage), calibrations, elsewhere={"Nope": None})
