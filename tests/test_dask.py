"""The Dask backend: the same calibrations on a ``LocalCluster`` and on a ``dask-jobqueue``
``SLURMCluster`` over the loopback Slurm give the local backend's payloads byte for byte; a
job that fails says why; a scheduler that is not there is a one-line error."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli import b2cal

from b2cal.backends.base import Job, JobState
from b2cal.backends.dask import DaskBackend
from b2cal.caf.workspace import Workspace
from b2cal.errors import B2CalError
from b2cal.toy.generate import generate_toy

pytestmark = pytest.mark.services

NAMES = ("ChannelT0", "ChannelGain")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Toy data, and its calibration by the local backend (what Dask must give)."""
    folder = tmp_path_factory.mktemp("dask")
    generate_toy(folder / "storage", 1, range(1, 5), seed=12)
    ran = b2cal(*run_args(folder / "storage", folder / "local"), "--workers", "2")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    return folder / "storage", folder / "local"


def run_args(storage: Path, output: Path) -> list[str]:
    return [
        "caf", "run", "--storage", str(storage), "--exp", "1", "--runs", "1-4",
        "--calibrations", "ChannelGain", "--output", str(output),
    ]  # fmt: skip


def same_payloads(output: Path, reference: Path) -> None:
    for name in NAMES:
        ours = Workspace(output).calibration(name).outputdb
        theirs = Workspace(reference).calibration(name).outputdb
        assert {p.name: p.read_bytes() for p in ours.iterdir()} == {
            p.name: p.read_bytes() for p in theirs.iterdir()
        }, name


def test_a_local_cluster_gives_the_local_payloads(data: tuple[Path, Path], tmp_path: Path) -> None:
    storage, reference = data
    ran = b2cal(*run_args(storage, tmp_path / "dask"), "--backend", "dask", "--workers", "2")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    same_payloads(tmp_path / "dask", reference)
    assert "dask backend" in (tmp_path / "dask" / "b2cal.log").read_text()


@pytest.mark.usefixtures("slurm")
def test_a_slurm_cluster_of_dask_workers_gives_the_local_payloads(
    data: tuple[Path, Path], tmp_path: Path
) -> None:
    storage, reference = data
    sites = tmp_path / "sites"
    sites.mkdir()
    (sites / "daskslurm.toml").write_text(
        f'storage_roots = ["{storage}"]\nwork_root = "{tmp_path}/work"\n'
        '[backend]\nname = "dask"\n[backend.resources]\nmemory_mb = 1000\nwall_minutes = 30\n'
        '[backend.options]\ncluster = "slurm"\njobs = 2\n'
    )
    home = tmp_path / "home"
    ran = b2cal(*run_args(storage, tmp_path / "out"), "--site", "daskslurm",
                env={"B2CAL_SITES_DIR": str(sites), "B2CAL_HOME": str(home)})  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    same_payloads(tmp_path / "out", reference)
    # the workers' Slurm output is kept in b2cal's home, not dropped where b2cal was started
    assert list((home / "logs" / "dask-workers").glob("*.out")), "no worker logs kept"
    assert not list(Path.cwd().glob("slurm-*.out"))


def test_a_failing_job_says_why_and_a_missing_scheduler_is_an_error(tmp_path: Path) -> None:
    with DaskBackend(workers=1) as backend:
        (handle,) = backend.submit([Job("x.i0.j0000", tmp_path, "json:nonexistent")])
        backend.wait([handle], 60)
        report = backend.poll([handle])[handle.job_id]
    assert report.state is JobState.FAILED and "AttributeError" in report.reason
    with pytest.raises(B2CalError, match=r"cannot reach tcp://127\.0\.0\.1:9"):
        DaskBackend(scheduler="tcp://127.0.0.1:9")
