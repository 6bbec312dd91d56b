"""The HTCondor backend, as far as it can be tested here.

No HTCondor daemons can be installed on these machines: Debian 12 has no HTCondor package, and
the ``htcondor`` wheel holds only the Python bindings (module ``htcondor2``). So these tests run
the real bindings on what needs no daemon — the submit description of a cluster, the state of a
job from its ad, the job event log read by ``htcondor2.JobEventLog`` from files in the
documented format — and check that a missing schedd is a clear error. Submitting, querying and
removing against a live schedd are not tested here.
"""

from __future__ import annotations

from pathlib import Path

import htcondor2
import pytest

from b2cal.backends.base import Job, JobState
from b2cal.backends.htcondor import (
    HTCondorBackend,
    item_data,
    report_from_ad,
    reports_from_event_log,
    submit_description,
)
from b2cal.backends.registry import open_backend
from b2cal.errors import B2CalError
from b2cal.sites import BackendSettings, JobResources

pytestmark = pytest.mark.unit

USAGE = (
    "\t\tUsr 0 00:00:01, Sys 0 00:00:00  -  Run Remote Usage\n"
    "\t\tUsr 0 00:00:00, Sys 0 00:00:00  -  Run Local Usage\n"
    "\t\tUsr 0 00:00:01, Sys 0 00:00:00  -  Total Remote Usage\n"
    "\t\tUsr 0 00:00:00, Sys 0 00:00:00  -  Total Local Usage\n"
    "\t0  -  Run Bytes Sent By Job\n\t0  -  Run Bytes Received By Job\n"
    "\t0  -  Total Bytes Sent By Job\n\t0  -  Total Bytes Received By Job\n"
)
#: A cluster of five jobs as HTCondor logs it: one done, one exit 3, one killed by SIGKILL,
#: one held (out of memory), one removed; a sixth (proc 5) still running.
EVENT_LOG = (
    "".join(
        f"000 (77.{p:03d}.000) 2026-12-02 15:00:00 Job submitted from host: <127.0.0.1:9618>\n...\n"
        for p in range(6)
    )
    + "".join(
        f"001 (77.{p:03d}.000) 2026-12-02 15:00:05 Job executing on host: <10.0.0.7:9618>\n...\n"
        for p in (0, 1, 2, 5)
    )
    + "005 (77.000.000) 2026-12-02 15:01:00 Job terminated.\n"
    "\t(1) Normal termination (return value 0)\n" + USAGE + "...\n"
    "005 (77.001.000) 2026-12-02 15:01:01 Job terminated.\n"
    "\t(1) Normal termination (return value 3)\n" + USAGE + "...\n"
    "005 (77.002.000) 2026-12-02 15:01:02 Job terminated.\n"
    "\t(0) Abnormal termination (signal 9)\n\t(0) No core file\n" + USAGE + "...\n"
    "012 (77.003.000) 2026-12-02 15:01:03 Job was held.\n"
    "\tError from slot1@node7: memory usage exceeded request_memory\n"
    "\tCode 34 Subcode 0\n...\n"
    "009 (77.004.000) 2026-12-02 15:01:04 Job was aborted.\n\tvia condor_rm (by user calib)\n...\n"
)


def test_a_cluster_is_described_once_with_each_job_folder_as_an_item(tmp_path: Path) -> None:
    resources = JobResources(cores=2, memory_mb=3000, wall_minutes=90, queue="group_belle.calib")
    described = submit_description(
        "b2cal.caf.collection:run_job", "/cvmfs/env/bin/python", resources,
        tmp_path / "events.log", {"+JobFlavour": '"workday"'},
    )  # fmt: skip
    submit = htcondor2.Submit(described)  # the bindings accept it as a submit description
    text = str(submit)
    for line in (
        "executable = /cvmfs/env/bin/python",
        "arguments = -m b2cal.backends.launch b2cal.caf.collection:run_job $(job_dir)",
        "initialdir = $(job_dir)",
        "output = $(job_dir)/batch.out",
        "error = $(job_dir)/batch.err",
        f"log = {tmp_path / 'events.log'}",
        "should_transfer_files = NO",
        "getenv = true",
        "request_cpus = 2",
        "request_memory = 3000",
        "allowed_execute_duration = 5400",
        "accounting_group = group_belle.calib",
        'MY.JobFlavour = "workday"',  # +Attr, as the bindings write it
    ):
        assert line in text, (line, text)
    jobs = [Job(f"T0.i0.j{n:04d}", tmp_path / f"{n:04d}", "m:f") for n in range(3)]
    assert item_data(jobs) == [{"job_dir": str(tmp_path / f"{n:04d}")} for n in range(3)]


def test_job_ads_map_to_states_and_reasons() -> None:
    def state(**ad: object) -> tuple[JobState, str]:
        report = report_from_ad(ad)
        return report.state, report.reason

    assert state(JobStatus=1) == (JobState.PENDING, "")
    assert state(JobStatus=2, RemoteHost="slot1@node7") == (JobState.RUNNING, "")
    assert state(JobStatus=4, ExitCode=0) == (JobState.DONE, "")
    assert state(JobStatus=4, ExitCode=3, LastRemoteHost="slot1@node7") == (
        JobState.FAILED, "exit status 3 on node7",
    )  # fmt: skip
    assert state(JobStatus=4, ExitBySignal=True, ExitSignal=9)[1] == "killed by signal 9"
    assert state(JobStatus=5, HoldReason="memory usage exceeded request_memory") == (
        JobState.FAILED, "held: memory usage exceeded request_memory",
    )  # fmt: skip
    assert state(JobStatus=3)[0] is JobState.CANCELLED


def test_the_event_log_tells_how_jobs_that_left_the_queue_ended(tmp_path: Path) -> None:
    path = tmp_path / "events-1.log"
    path.write_text(EVENT_LOG)
    reports = reports_from_event_log(path)
    assert {job: r.state for job, r in reports.items()} == {
        "77.0": JobState.DONE,
        "77.1": JobState.FAILED,
        "77.2": JobState.FAILED,
        "77.3": JobState.FAILED,
        "77.4": JobState.CANCELLED,
        "77.5": JobState.RUNNING,
    }
    assert reports["77.1"].reason == "exit status 3"
    assert reports["77.2"].reason == "killed by signal 9"
    assert "memory usage exceeded request_memory" in reports["77.3"].reason
    assert "condor_rm" in reports["77.4"].reason
    # a log cut short inside an event (a full disk) is an error naming the file, not a guess
    broken = tmp_path / "events-2.log"
    broken.write_text(
        "005 (78.000.000) 2026-12-02 15:01:02 Job terminated.\n"
        "\t(0) Abnormal termination (signal 9)\n...\n"
    )
    with pytest.raises(B2CalError, match=r"events-2\.log cannot be read"):
        reports_from_event_log(broken)


def test_without_a_schedd_submission_is_a_clear_error(tmp_path: Path) -> None:
    backend = open_backend(BackendSettings(name="htcondor", options={"schedd": "nowhere"}))
    assert isinstance(backend, HTCondorBackend) and backend.reattach
    with pytest.raises(B2CalError, match=r"HTCondor schedd cannot be reached \(nowhere\)"):
        backend.submit([Job("T0.i0.j0000", tmp_path, "m:f")])
    with pytest.raises(B2CalError, match="unknown colour"):
        open_backend(BackendSettings(name="htcondor", options={"colour": "red"}))
