"""The HTCondor backend's state machine against schedds that follow HTCondor's documented
behaviour: no schedd can run on these machines, so they are the stand-ins of
tests/fake_htcondor.py (real bindings for the submit text, the item data, the constraints and
the job event logs; queues, status codes, holds, removals that take time, timeouts and several
schedds by name in Python).
"""

from __future__ import annotations

import threading
from pathlib import Path

import htcondor2
import pytest
from fake_htcondor import FakePool, FakeSchedd

from b2cal.backends.base import Job, JobHandle, JobState, Limits
from b2cal.backends.htcondor import HTCondorBackend
from b2cal.backends.htcondor.options import HTCondorOptions
from b2cal.errors import B2CalError
from b2cal.sites import JobResources

pytestmark = pytest.mark.services


class Clock:
    def __init__(self) -> None:
        self.now = 1_796_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def pool(clock: Clock) -> FakePool:
    return FakePool("ap1.sdcc.bnl.gov", "ap2.sdcc.bnl.gov", clock=clock)


def backend(pool: FakePool, clock: Clock, home: str = "ap1.sdcc.bnl.gov", **options: object):  # type: ignore[no-untyped-def]
    return HTCondorBackend(
        Limits(poll_seconds=15),
        HTCondorOptions(schedd=home, **options),  # type: ignore[arg-type]
        connect=pool.connect,
        clock=clock,
        sleep=lambda seconds: setattr(clock, "now", clock.now + seconds),
    )


def jobs(root: Path, count: int, first: int = 0) -> list[Job]:
    found = []
    for index in range(first, first + count):
        folder = root / "jobs" / f"{index:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        found.append(Job(f"T0.i0.j{index:04d}", folder, "m:f", JobResources(wall_minutes=60)))
    return found


def submitted(
    pool: FakePool, clock: Clock, root: Path, count: int, **options: object
) -> tuple[HTCondorBackend, list[JobHandle], FakeSchedd]:
    """A backend on ``ap1``, ``count`` jobs submitted to it, and that schedd."""
    condor = backend(pool, clock, **options)
    return condor, condor.submit(jobs(root, count)), pool.schedds["ap1.sdcc.bnl.gov"]


def states(reports: dict[str, object]) -> list[JobState]:
    return [r.state for r in reports.values()]  # type: ignore[attr-defined]


def test_one_cluster_per_submission_tagged_with_the_folders(
    tmp_path: Path, pool: FakePool, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("B2CAL_STATE_URL", "postgresql://calib:hunter2@db/b2cal")
    condor = backend(pool, clock)
    handles = condor.submit(jobs(tmp_path / "with space", 3))
    schedd = pool.schedds["ap1.sdcc.bnl.gov"]
    assert [h.job_id for h in handles] == [f"ap1.sdcc.bnl.gov#100.{p}" for p in range(3)]
    assert schedd.calls["submit"] == 1
    sent = schedd.received[0]
    assert "QUEUE job_dir,job_arg,job_tag FROM (" in sent
    assert "getenv" not in sent and "hunter2" not in sent
    assert [ad["B2CalJobDir"] for ad in schedd.queue.values()] == [
        str(h.job.directory) for h in handles
    ]
    assert states(condor.poll(handles)) == [JobState.PENDING] * 3
    assert schedd.constraints[-1] == 'member(ClusterId, {100}) && Owner == "calib"'


def test_ids_name_their_schedd_and_jobs_are_picked_up_there_if_theirs(
    tmp_path: Path, pool: FakePool, clock: Clock
) -> None:
    first = backend(pool, clock).submit(jobs(tmp_path / "a", 2))
    other = backend(pool, clock, home="ap2.sdcc.bnl.gov").submit(jobs(tmp_path / "b", 2))
    assert [h.job_id.split("#")[1] for h in first] == [h.job_id.split("#")[1] for h in other]
    ap1, ap2 = pool.schedds["ap1.sdcc.bnl.gov"], pool.schedds["ap2.sdcc.bnl.gov"]
    ap1.start("100.0")
    # the driver restarts on the other access point: it asks the schedd that holds the jobs
    restarted = backend(pool, clock, home="ap2.sdcc.bnl.gov")
    found = restarted.attach([(h.job, h.job_id) for h in first])
    assert [h.job_id for h in found] == [h.job_id for h in first]
    assert states(restarted.poll(found)) == [JobState.RUNNING, JobState.PENDING]
    # an id that names another folder's job (a record copied, a schedd whose ids started
    # again) is not picked up
    wrong = [(first[0].job, other[0].job_id), (first[1].job, "ap1.sdcc.bnl.gov#100.1")]
    assert [h.job_id for h in restarted.attach(wrong)] == ["ap1.sdcc.bnl.gov#100.1"]
    # once a schedd took a submission, every question is about the owner it recorded; a
    # restarted driver that submitted nothing there yet assumes no owner
    assert not any("Owner" in c for c in ap1.constraints), ap1.constraints
    restarted.submit(jobs(tmp_path / "c", 1))
    assert "Owner" not in ap2.constraints[-1]  # asked before its first submission there
    clock.now += 15
    assert states(restarted.poll(other)) == [JobState.PENDING] * 2
    assert ap2.constraints[-1] == 'member(ClusterId, {100}) && Owner == "calib"'


def test_the_owner_is_the_one_the_schedd_records(
    tmp_path: Path, pool: FakePool, clock: Clock
) -> None:
    # a Kerberos principal, not the local user name the driver runs as
    schedd = pool.schedds["ap1.sdcc.bnl.gov"]
    schedd.owner = "calib@BNL.GOV"
    condor = backend(pool, clock)
    folders = jobs(tmp_path, 2)
    handles = condor.submit(folders)
    schedd.start("100.0")
    assert states(condor.poll(handles)) == [JobState.RUNNING, JobState.PENDING]
    assert schedd.constraints[-1].endswith('Owner == "calib@BNL.GOV"')
    again = backend(pool, clock).submit(folders)  # a restarted driver: followed, not twice
    assert [h.job_id for h in again] == [h.job_id for h in handles]
    # a cluster ad that names another owner than the schedd records: a job the owner's query
    # misses while its log shows no end is asked for again, and not taken for gone
    schedd.submitter = "calib"
    other = backend(pool, clock)
    later = other.submit(jobs(tmp_path / "later", 1))
    schedd.start("101.0")
    clock.now += 15
    assert states(other.poll(later)) == [JobState.RUNNING]
    assert schedd.constraints[-2:] == ['member(ClusterId, {101}) && Owner == "calib"',
                                       "member(ClusterId, {101})"]  # fmt: skip
    clock.now += 15
    assert states(other.poll(later)) == [JobState.RUNNING]  # and asked for from now on
    assert schedd.constraints[-1] == 'member(ClusterId, {101}) && Owner == "calib@BNL.GOV"'
    schedd.finish("101.0")  # and once it has ended, it has
    clock.now += 15
    assert states(other.poll(later)) == [JobState.DONE]


def test_an_untagged_job_is_picked_up_only_under_a_legacy_id(
    tmp_path: Path, pool: FakePool, clock: Clock
) -> None:
    _, handles, schedd = submitted(pool, clock, tmp_path, 2)
    for job in ("100.0", "100.1"):
        del schedd.queue[job]["B2CalJobDir"]  # not b2cal's tag: someone else's cluster 100
    restarted = backend(pool, clock)
    assert restarted.attach([(handles[0].job, handles[0].job_id)]) == []
    legacy = restarted.attach([(handles[1].job, "100.1")])  # recorded before jobs were tagged
    assert [h.job_id for h in legacy] == ["100.1"]


def test_a_driver_that_died_before_recording_its_jobs_submits_nothing_twice(
    tmp_path: Path, pool: FakePool, clock: Clock
) -> None:
    folders = jobs(tmp_path, 3)
    lost = backend(pool, clock).submit(folders)  # ... and the driver dies before recording
    schedd = pool.schedds["ap1.sdcc.bnl.gov"]
    schedd.start("100.1")
    again = backend(pool, clock).submit(folders)
    assert schedd.calls["submit"] == 1
    assert [h.job_id for h in again] == [h.job_id for h in lost]
    # one that completed meanwhile is submitted again (its end is the engine's to judge)
    schedd.finish("100.2", code=3)
    third = backend(pool, clock).submit(folders)
    assert schedd.calls["submit"] == 2 and third[2].job_id == "ap1.sdcc.bnl.gov#101.0"


def test_a_submission_whose_answer_was_lost_is_not_called_refused(
    tmp_path: Path, pool: FakePool, clock: Clock
) -> None:
    condor = backend(pool, clock)
    folders = jobs(tmp_path, 2)
    schedd = pool.schedds["ap1.sdcc.bnl.gov"]
    schedd.lost_answers = 1  # the schedd queued the cluster; its reply timed out
    with pytest.raises(B2CalError, match="did not confirm the submission") as raised:
        condor.submit(folders)
    assert "whether the jobs were queued is unknown" in str(raised.value)
    assert "refused" not in str(raised.value)
    again = condor.submit(folders)  # the next try finds them by their tag
    assert [h.job_id for h in again] == ["ap1.sdcc.bnl.gov#100.0", "ap1.sdcc.bnl.gov#100.1"]
    assert schedd.calls["submit"] == 1


def test_a_schedd_that_does_not_answer_for_a_while_fails_nothing(
    tmp_path: Path, pool: FakePool, clock: Clock
) -> None:
    condor, handles, schedd = submitted(pool, clock, tmp_path, 2, unreachable_seconds=300)
    schedd.start("100.0")
    assert states(condor.poll(handles)) == [JobState.RUNNING, JobState.PENDING]
    connects = pool.connects
    schedd.timeouts["query"] = 3
    for _ in range(3):
        clock.now += 60
        assert states(condor.poll(handles)) == [JobState.RUNNING, JobState.PENDING]
    assert pool.connects > connects  # opened again after each failed call
    clock.now += 60
    schedd.finish("100.0")
    assert states(condor.poll(handles)) == [JobState.DONE, JobState.PENDING]
    # a removal that times out is asked again at the next poll, and fails nothing
    schedd.hold("100.1", "memory usage exceeded request_memory", 34)
    schedd.timeouts["act"] = 1
    clock.now += 60
    assert condor.poll(handles[1:])[handles[1].job_id].state is JobState.RUNNING
    clock.now += 60
    condor.poll(handles[1:])
    assert schedd.queue["100.1"]["JobStatus"] == 3
    # past the grace period, the jobs it holds fail, saying why
    schedd.timeouts["query"] = 100
    for _ in range(6):
        clock.now += 60
        last = condor.poll(handles[1:])[handles[1].job_id]
    assert last.state is JobState.FAILED
    assert "did not answer for 300 s" in last.reason


def test_jobs_that_never_run_are_failed_with_the_reason(
    tmp_path: Path, pool: FakePool, clock: Clock
) -> None:
    condor, handles, schedd = submitted(
        pool, clock, tmp_path, 3, idle_limit_minutes=60, max_starts=3
    )
    schedd.reject("100.0", "no match found", idle_since=clock.now - 2 * 3600)
    for _ in range(4):  # evicted and started again and again
        schedd.start("100.1")
        schedd.evict("100.1")
    schedd.reject("100.2", "no match found", idle_since=clock.now - 600)
    first = condor.poll(handles)
    assert [r.state.finished for r in first.values()] == [False, False, False]
    assert first[handles[2].job_id].reason == "idle: no match found"
    for _ in range(2):
        schedd.step()
    clock.now += 60
    ended = condor.poll(handles)
    zero, one = ended[handles[0].job_id], ended[handles[1].job_id]
    assert (
        zero.state is JobState.FAILED
        and "no slot of the pool matched it for 120 min" in zero.reason
    )
    assert "no match found" in zero.reason and "FileSystemDomain" in zero.reason
    assert one.state is JobState.FAILED and "started 4 times" in one.reason
    assert ended[handles[2].job_id].state is JobState.PENDING


def test_a_busy_pool_fails_no_idle_job(tmp_path: Path, pool: FakePool, clock: Clock) -> None:
    condor, handles, schedd = submitted(pool, clock, tmp_path, 4, idle_limit_minutes=60)
    long_ago = clock.now - 5 * 3600
    schedd.reject("100.0", "insufficient priority", idle_since=long_ago)
    schedd.reject("100.1", "group quota exceeded", idle_since=long_ago)
    schedd.match("100.2")  # it matched once: a slot can run it, the pool is full now
    schedd.reject("100.2", "no match found", idle_since=long_ago)
    schedd.start("100.3")  # it ran, was evicted, and waits for a slot again
    schedd.evict("100.3")
    schedd.reject("100.3", "no match found", idle_since=long_ago)
    reports = condor.poll(handles)
    assert states(reports) == [JobState.PENDING] * 4
    assert reports[handles[0].job_id].reason == "idle: insufficient priority"
    assert schedd.calls["act"] == 0


def test_a_removed_or_held_job_has_ended_only_once_it_left_the_queue(
    tmp_path: Path, pool: FakePool, clock: Clock
) -> None:
    condor = backend(pool, clock)
    folders = jobs(tmp_path, 2)
    handles = condor.submit(folders)
    schedd = pool.schedds["ap1.sdcc.bnl.gov"]
    for job in ("100.0", "100.1"):
        schedd.start(job)
    schedd.hold("100.0", "memory usage exceeded request_memory", 34)
    condor.cancel(handles[1:])
    assert schedd.queue["100.1"]["RemoveReason"] == "cancelled by b2cal"  # passed as it should
    for _ in range(2):  # removed (status 3), still running on its node
        clock.now += 15
        reports = condor.poll(handles)
        assert [r.state.finished for r in reports.values()] == [False, False], reports
        with pytest.raises(B2CalError, match="still removing the last job of 1 job folders"):
            condor.submit(folders[1:])  # a retry now waits for it, and submits nothing
        assert schedd.calls["submit"] == 1
        schedd.step()
    clock.now += 15
    reports = condor.poll(handles)
    held, cancelled = reports[handles[0].job_id], reports[handles[1].job_id]
    assert held.state is JobState.FAILED
    assert held.reason.startswith("it ran out of memory: held (code 34)") and "node7" in held.reason
    assert cancelled.state is JobState.CANCELLED
    assert condor.submit(folders)[0].job_id == "ap1.sdcc.bnl.gov#101.0"  # gone: tried again


def test_a_job_being_removed_is_waited_for_not_followed(
    tmp_path: Path, pool: FakePool, clock: Clock
) -> None:
    schedd = pool.schedds["ap1.sdcc.bnl.gov"]
    slept: list[float] = []

    def wait(seconds: float) -> None:
        slept.append(seconds)
        clock.now += seconds
        schedd.step()

    condor = HTCondorBackend(
        Limits(poll_seconds=15), HTCondorOptions(schedd=schedd.name), connect=pool.connect,
        clock=clock, sleep=wait,
    )  # fmt: skip
    folders = jobs(tmp_path, 4)
    handles = condor.submit(folders)
    for proc in range(4):
        schedd.start(f"100.{proc}")
    condor.cancel(handles[:3])  # by b2cal jobs cancel: removed, still running on their nodes
    schedd.log_abort("100.0")  # its abort is logged, its ad not gone yet: it has ended
    retry = condor.submit(folders)  # after b2cal jobs resubmit
    assert slept == [15.0, 15.0]  # until 100.1 and 100.2 had left the queue
    assert [h.job_id.split("#")[1] for h in retry] == ["101.0", "101.1", "101.2", "100.3"]


def test_holds_and_removals_keep_their_reasons(
    tmp_path: Path, pool: FakePool, clock: Clock
) -> None:
    condor, handles, schedd = submitted(pool, clock, tmp_path, 4)
    schedd.start("100.0")
    schedd.hold("100.0", "The job exceeded allowed execute duration of 01:00:00", 47)
    schedd.hold("100.1", "submitted on hold at user's request", 15)
    schedd.hold("100.2", "Spooling input data files", 16)
    schedd.act(htcondor2.JobAction.Remove, ["100.3"], ("drained by the admins", 0))
    first = condor.poll(handles)
    assert [r.state for r in first.values()][1:3] == [JobState.PENDING, JobState.PENDING]
    assert "submitted on hold" in first[handles[1].job_id].reason
    assert first[handles[3].job_id].reason == "being removed (drained by the admins)"
    assert schedd.calls["act"] == 2  # the wall-time hold only; the others are no failures
    for _ in range(2):
        schedd.step()
    clock.now += 15
    ended = condor.poll(handles)
    wall = ended[handles[0].job_id]
    assert wall.state is JobState.FAILED and wall.reason.startswith(
        "it ran past its wall time: held (code 47): The job exceeded allowed execute duration"
    )
    removed = ended[handles[3].job_id]
    assert removed.state is JobState.CANCELLED and "drained by the admins" in removed.reason


def test_a_completed_job_still_in_the_queue_has_ended(
    tmp_path: Path, pool: FakePool, clock: Clock
) -> None:
    condor, handles, schedd = submitted(pool, clock, tmp_path, 3)
    for job in ("100.0", "100.1", "100.2"):
        schedd.start(job)
    schedd.finish("100.0", leave_in_queue=True)
    schedd.finish("100.1", code=2, leave_in_queue=True)
    schedd.finish("100.2", signal=9, leave_in_queue=True)
    assert all(schedd.queue[f"100.{p}"]["JobStatus"] == 4 for p in range(3))
    reports = condor.poll(handles)
    assert states(reports) == [JobState.DONE, JobState.FAILED, JobState.FAILED]
    assert reports[handles[1].job_id].reason == "exit status 2 on node7"
    assert reports[handles[2].job_id].reason == "killed by signal 9 on node7"
    assert condor.submit(jobs(tmp_path, 1))[0].job_id.endswith("#101.0")  # not followed


def test_a_job_that_left_the_queue_without_a_logged_end(
    tmp_path: Path, pool: FakePool, clock: Clock
) -> None:
    condor, handles, schedd = submitted(pool, clock, tmp_path, 2)
    (handles[0].job.directory / "status.json").write_text('{"state": "done"}')
    schedd.leave("100.0")
    schedd.leave("100.1")
    reports = condor.poll(handles)
    assert reports[handles[0].job_id].state is JobState.DONE
    lost = reports[handles[1].job_id]
    assert lost.state is JobState.FAILED and "without an end in its event log" in lost.reason


def test_nothing_is_kept_of_jobs_that_ended(tmp_path: Path, pool: FakePool, clock: Clock) -> None:
    condor, handles, schedd = submitted(pool, clock, tmp_path, 3, unreachable_seconds=60)
    schedd.start("100.0")
    schedd.hold("100.1", "memory usage exceeded request_memory", 34)
    condor.cancel(handles[2:])
    condor.poll(handles)
    for _ in range(2):
        schedd.step()
    schedd.finish("100.0")
    clock.now += 15
    assert all(r.state.finished for r in condor.poll(handles).values())
    # a long driver follows thousands of jobs: what it kept of each ended one would pile up
    assert condor._last == {} and condor._removing == {}
    # also of one failed while being removed, its schedd not answering
    more = condor.submit(jobs(tmp_path / "more", 1))
    schedd.hold("101.0", "memory usage exceeded request_memory", 34)
    clock.now += 15
    condor.poll(more)
    assert more[0].job_id in condor._removing
    schedd.timeouts["query"] = 100
    for _ in range(2):
        clock.now += 61
        last = condor.poll(more)[more[0].job_id]
    assert last.state is JobState.FAILED
    assert condor._last == {} and condor._removing == {}


def test_one_query_per_poll_interval_for_every_collection(
    tmp_path: Path, pool: FakePool, clock: Clock
) -> None:
    condor = backend(pool, clock)
    first = condor.submit(jobs(tmp_path / "T0", 2))
    second = condor.submit(jobs(tmp_path / "Gain", 2))
    schedd = pool.schedds["ap1.sdcc.bnl.gov"]
    condor.poll(first)
    condor.poll(second)
    asked = schedd.calls["query"]
    for _ in range(4):
        clock.now += 15
        condor.poll(first)
        condor.poll(second)
    assert schedd.calls["query"] - asked == 4
    assert schedd.constraints[-1] == 'member(ClusterId, {100, 101}) && Owner == "calib"'


def test_the_shared_schedd_is_called_by_one_thread_at_a_time(
    tmp_path: Path, pool: FakePool, clock: Clock
) -> None:
    condor = backend(pool, clock)
    groups = [condor.submit(jobs(tmp_path / f"c{n}", 2)) for n in range(4)]
    pool.schedds["ap1.sdcc.bnl.gov"].latency = 0.002
    errors: list[BaseException] = []

    def follow(handles: list[JobHandle]) -> None:
        try:
            for _ in range(30):
                clock.now += 1
                condor.poll(handles)
        except BaseException as exc:
            errors.append(exc)

    def submit() -> None:  # submissions do not wait for a poll: only the schedd's lock
        try:
            for n in range(15):
                condor.submit(jobs(tmp_path / f"s{n}", 1))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=follow, args=(g,)) for g in groups]
    threads.append(threading.Thread(target=submit))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_a_removal_the_schedd_refuses_is_an_error_of_cancel_and_asked_again_in_poll(
    tmp_path: Path, pool: FakePool, clock: Clock
) -> None:
    condor = backend(pool, clock)
    handles = condor.submit(jobs(tmp_path, 2))
    schedd = pool.schedds["ap1.sdcc.bnl.gov"]
    schedd.refuse_removal = True
    with pytest.raises(
        B2CalError, match=r"HTCondor refused the removal of 2 jobs \(2 not permitted"
    ):
        condor.cancel(handles)
    # b2cal's own removal of a job that would never end: logged, asked again at the next poll
    more = condor.submit(jobs(tmp_path / "held", 1))
    schedd.hold("101.0", "memory usage exceeded request_memory", 34)
    clock.now += 15
    first = condor.poll(more)[more[0].job_id]
    assert first.state is JobState.RUNNING and first.reason.startswith("being removed")
    assert schedd.queue["101.0"]["JobStatus"] == 5
    schedd.refuse_removal = False
    clock.now += 15
    condor.poll(more)
    assert schedd.queue["101.0"]["JobStatus"] == 3


def test_credentials_are_issued_before_each_submission(
    tmp_path: Path, pool: FakePool, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    issued: list[str] = []
    monkeypatch.setattr(
        htcondor2.Submit, "issue_credentials", lambda self: issued.append(str(self)) or None
    )
    condor = backend(pool, clock, credentials=True, wall_time_attribute="+RequestRuntime")
    condor.submit(jobs(tmp_path, 2))
    assert len(issued) == 1 and "MY.RequestRuntime = 3600" in issued[0]
    monkeypatch.setattr(
        htcondor2.Submit, "issue_credentials", lambda self: "https://token.desy.de/x"
    )
    with pytest.raises(B2CalError, match=r"needs a credential first: visit https://token"):
        condor.submit(jobs(tmp_path, 1, first=5))
