"""The HTCondor backend with the real bindings, on everything that needs no daemon.

No schedd can run on these machines: Debian 12 has no HTCondor package, and the ``htcondor``
wheel holds only the Python bindings (module ``htcondor2``). So these tests run the real
bindings on what needs none: the submit description as the schedd would receive it (parsed
back by ``htcondor2.Submit``, item data included), job event logs read by
``htcondor2.JobEventLog`` from files in the format pools write, the site's options, the site
files, and how a schedd is located. The backend's state machine against schedds is tested with
a stand-in that follows HTCondor's documented behaviour (tests/test_htcondor_backend.py).
"""

from __future__ import annotations

import socket
import time
import tomllib
from pathlib import Path

import htcondor2
import pytest
from fake_htcondor import aborted, event, evicted, held, terminated

from b2cal.backends.base import Job, JobState
from b2cal.backends.htcondor import (
    HTCondorBackend,
    item_data,
    open_htcondor,
    reports_from_event_log,
    submit_description,
)
from b2cal.backends.htcondor.eventlog import EventLogReader
from b2cal.backends.htcondor.options import HTCondorOptions
from b2cal.backends.htcondor.schedd import locate_schedd
from b2cal.backends.registry import open_backend
from b2cal.errors import B2CalError
from b2cal.sites import BackendSettings, JobResources, load_site

pytestmark = pytest.mark.services

ROOT = Path(__file__).resolve().parents[1]


def described(tmp_path: Path, resources: JobResources, options: HTCondorOptions) -> str:
    """The submit text of one cluster, as the bindings read it back."""
    description = submit_description(
        "b2cal.caf.collection:run_job", "/cvmfs/env/bin/python", resources,
        tmp_path / "events.log", options,
    )  # fmt: skip
    return str(htcondor2.Submit(description))


def test_no_secret_reaches_a_job_ad(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("B2CAL_STATE_URL", "postgresql://calib:hunter2@db.bnl.gov/b2cal")
    monkeypatch.setenv("B2CAL_CDB_URL", "postgresql://calib:hunter2@db.bnl.gov/cdb")
    options = HTCondorOptions(environment={"B2CAL_HOME": "/gpfs/belle2/b2cal"})
    text = described(tmp_path, JobResources(cores=4), options)
    assert "getenv" not in text and "hunter2" not in text
    assert (
        "environment = \"PYTHONUNBUFFERED='1' OMP_NUM_THREADS='4' B2CAL_HOME='/gpfs/belle2/b2cal'\""
        in text
    )
    for environment in (
        {"B2CAL_STATE_URL": "postgresql://calib:hunter2@db/b2cal"},
        {"DB": "postgresql://calib:hunter2@db/b2cal"},
        {"AWS_SECRET_ACCESS_KEY": "x"},
    ):
        settings = BackendSettings(name="htcondor", options={"environment": environment})
        with pytest.raises(B2CalError, match="looks like a secret"):
            open_backend(settings)
    with pytest.raises(B2CalError, match="getenv: b2cal sets it itself"):
        open_backend(BackendSettings(name="htcondor", options={"submit": {"getenv": "true"}}))


def test_a_cluster_is_described_once_with_each_job_folder_as_an_item(tmp_path: Path) -> None:
    resources = JobResources(cores=2, memory_mb=3000, wall_minutes=90, queue="group_belle.calib")
    options = HTCondorOptions(submit={"+JobFlavour": '"workday"'}, disk_mb=2000)
    text = described(tmp_path, resources, options)
    for line in (
        "executable = /cvmfs/env/bin/python",
        # the new syntax: a folder with a space is one argument
        "arguments = \"-m b2cal.backends.launch b2cal.caf.collection:run_job '$(job_arg)'\"",
        "initialdir = $(job_dir)",
        "output = $(job_dir)/batch.out",
        "error = $(job_dir)/batch.err",
        f"log = {tmp_path / 'events.log'}",
        "should_transfer_files = NO",
        "request_cpus = 2",
        "request_memory = 3000",
        "request_disk = 2048000",
        "allowed_execute_duration = 5400",
        "accounting_group = group_belle.calib",
        'MY.B2CalJobDir = "$(job_tag)"',
        'MY.JobFlavour = "workday"',  # +Attr, as the bindings write it
    ):
        assert line in text, (line, text)
    folders = [tmp_path / "a b" / "0000", tmp_path / "it's" / "0001"]
    jobs = [Job(f"T0.i0.j{n:04d}", folder, "m:f") for n, folder in enumerate(folders)]
    assert item_data(jobs)[0] == {"job_dir": str(folders[0])} | {
        "job_arg": str(folders[0]),
        "job_tag": str(folders[0]),
    }
    assert item_data(jobs)[1]["job_arg"] == str(folders[1]).replace("'", "''")


def test_a_sites_wall_time_attribute_and_no_late_materialization(tmp_path: Path) -> None:
    desy = HTCondorOptions(wall_time_attribute="+RequestRuntime")
    text = described(tmp_path, JobResources(wall_minutes=300), desy)
    assert "MY.RequestRuntime = 18000" in text and "allowed_execute_duration" not in text
    # late materialization would hide jobs not yet in the queue: refused
    for key in ("max_idle", "max_materialize"):
        settings = BackendSettings(name="htcondor", options={"submit": {key: "10"}})
        with pytest.raises(B2CalError, match="late materialization"):
            open_backend(settings)


def test_credentials_are_for_this_access_points_schedd_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = (ROOT / "deployments" / "sites" / "desy.toml").read_text()
    assert "credentials = true" in text
    elsewhere = text.replace(
        "[backend.options]", '[backend.options]\nschedd = "naf-belle12.desy.de"'
    )
    (tmp_path / "desy.toml").write_text(elsewhere)
    monkeypatch.setenv("B2CAL_SITES_DIR", str(tmp_path))
    # the bindings issue credentials for the local machine's access point, as condor_submit
    with pytest.raises(B2CalError) as refused:
        open_backend(load_site("desy").backend)
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"{tmp_path / 'desy.toml'} [backend.options]")
    assert "credentials" in message and "naf-belle12.desy.de" in message
    for here in (socket.getfqdn(), f"calib@{socket.gethostname()}"):
        settings = BackendSettings(name="htcondor", options={"credentials": True, "schedd": here})
        assert isinstance(open_backend(settings), HTCondorBackend)


def test_the_job_python_must_be_on_the_shared_filesystem() -> None:
    settings = BackendSettings(
        name="htcondor",
        shared_roots=[Path("/gpfs/belle2")],
        options={"python": "/home/calib/venv/bin/python"},
    )
    with pytest.raises(B2CalError, match=r"python: /home/calib/venv/bin/python is not under"):
        open_backend(settings)
    with pytest.raises(B2CalError, match="is not under"):  # the driver's own, by default
        open_backend(BackendSettings(name="htcondor", shared_roots=[Path("/gpfs/belle2")]))
    fine = settings.model_copy(update={"options": {"python": "/gpfs/belle2/env/bin/python"}})
    assert isinstance(open_backend(fine), HTCondorBackend)


#: A cluster as a pool logs it: file transfer (040), executions (001), job ad information
#: (028), image sizes (006), an eviction (004), holds (012) and a release (013), ends (005),
#: a removal (009).
EVENT_LOG = (
    "".join(event(0, f"77.{p}") for p in range(7))
    + event(40, "77.0", "\tTransferring to host: <10.0.0.7:9618>\n")
    + "".join(event(1, f"77.{p}") for p in (0, 1, 2, 5, 6))
    + event(28, "77.0", "Proc = 0\nCluster = 77\nEventTypeNumber = 28\n")
    + event(6, "77.0", "\t3  -  MemoryUsage of job (MB)\n\t2048  -  ResidentSetSize of job (KB)\n")
    + terminated("77.0", 0)
    + terminated("77.1", 3)
    + terminated("77.2", signal=9)
    + held("77.3", "memory usage exceeded request_memory", 34)
    + aborted("77.4", "via condor_rm (by user calib)")
    + evicted("77.6")
    + held("77.6", "submitted on hold", 15)
    + event(13, "77.6", "\tvia condor_release (by user calib)\n")
)  # fmt: skip


def test_event_logs_tell_how_jobs_ended_and_are_read_on(tmp_path: Path) -> None:
    path = tmp_path / "events@ap1@1.log"
    path.write_text(EVENT_LOG)
    reports = reports_from_event_log(path)
    assert {job: r.state for job, r in reports.items()} == {
        "77.0": JobState.DONE,
        "77.1": JobState.FAILED,
        "77.2": JobState.FAILED,
        "77.3": JobState.PENDING,  # held is no end: the job is still in the queue
        "77.4": JobState.CANCELLED,
        "77.5": JobState.RUNNING,
        "77.6": JobState.PENDING,  # evicted, held, released: waits to run again
    }
    assert reports["77.1"].reason == "exit status 3"
    assert reports["77.2"].reason == "killed by signal 9"
    assert reports["77.3"].reason.startswith("it ran out of memory: held (code 34)")
    assert "condor_rm" in reports["77.4"].reason
    # a log cut off inside an event: what comes before is read, the rest once it is written
    reader = EventLogReader(tmp_path / "events@ap1@2.log")
    assert reader.read() == {}  # not written yet
    whole = terminated("78.0", 0)
    reader.path.write_text(event(0, "78.0") + whole[:70])
    assert reader.read()["78.0"].state is JobState.PENDING
    started = time.monotonic()  # a log cut off for good is not waited on at every poll
    assert reader.read()["78.0"].state is JobState.PENDING
    assert time.monotonic() - started < 0.5
    reader.path.write_text(event(0, "78.0") + whole + aborted("78.1", "via condor_rm"))
    later = reader.read()
    assert later["78.0"].state is JobState.DONE and later["78.1"].state is JobState.CANCELLED
    # an event that cannot be parsed keeps what was read before it, no error
    broken = tmp_path / "events@ap1@3.log"
    broken.write_text(event(0, "79.0") + "005 (79.000.000) 2026-12-02 Job terminated.\n...\n")
    assert reports_from_event_log(broken)["79.0"].state is JobState.PENDING


class _Collector:
    """What ``htcondor2.Collector`` answers when the pool has no schedd of that name."""

    def __init__(self, pool: str | None = None) -> None:
        self.pool = pool

    def locate(self, daemon: object, name: str | None = None) -> None:
        return None


def test_an_unknown_schedd_is_refused_not_replaced_by_the_local_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    opened: list[object] = []
    monkeypatch.setattr(htcondor2, "Collector", _Collector)
    monkeypatch.setattr(htcondor2, "Schedd", lambda location=None: opened.append(location))
    with pytest.raises(B2CalError, match=r"no HTCondor schedd named 'spool9' in pool cm\.bnl"):
        locate_schedd("spool9", "cm.bnl")
    assert opened == []  # Schedd(None) would have been the local schedd
    # and without any schedd at all, opening the backend works; submitting says why not
    backend = open_backend(BackendSettings(name="htcondor", options={"schedd": "spool9"}))
    with pytest.raises(B2CalError, match="no HTCondor schedd named 'spool9'"):
        backend.submit([Job("T0.i0.j0000", Path("/tmp"), "m:f")])


@pytest.mark.parametrize("site", ["bnl", "desy"])
def test_both_production_sites_run_htcondor(site: str) -> None:
    settings = load_site(site).backend
    assert settings.name == "htcondor" and settings.shared_roots
    backend = open_htcondor(settings)
    assert any(Path(backend.python).is_relative_to(r) for r in settings.shared_roots)
    assert settings.resources.memory_mb and settings.resources.wall_minutes
    if site == "desy":
        assert backend.options.wall_time_attribute == "+RequestRuntime"
        assert backend.options.credentials
    else:
        assert settings.resources.queue  # the accounting group


def test_an_unknown_option_names_the_site_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = (ROOT / "deployments" / "sites" / "desy.toml").read_text()
    (tmp_path / "desy.toml").write_text(
        text.replace("[backend.options]", '[backend.options]\ncolour = "red"')
    )
    monkeypatch.setenv("B2CAL_SITES_DIR", str(tmp_path))
    with pytest.raises(B2CalError, match=rf"{tmp_path / 'desy.toml'} \[backend.options\] colour"):
        open_backend(load_site("desy").backend)


def test_the_bindings_are_those_the_access_points_run() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pinned = [d for d in project["project"]["dependencies"] if d.startswith("htcondor")]
    assert pinned and "<" in pinned[0], pinned  # an upper bound: a new major is checked first
