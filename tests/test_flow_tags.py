"""Which runs carry a request's tags: its calibrations' flow runs do (the UI's filters and
b2cal's views find them by tag), their task runs do not (every tag of a task run costs an API
write before it runs: ``flows.common.untagged_tasks``). Without a Prefect server: the tags
context a subflow's body sees, as Prefect reads it when it makes a task run."""

from __future__ import annotations

import contextvars

import pytest

pytestmark = pytest.mark.unit


def test_a_subflows_body_makes_its_task_runs_without_the_tags_its_flow_run_got() -> None:
    # Imported here, not at collection: loading a flow module fixes Prefect's settings in the
    # process, and the stack tier (which collects this file too) sets its API address later.
    from prefect import tags
    from prefect.context import TagsContext

    from flows.common import StartTurns

    turns = StartTurns()

    def one_calibration() -> tuple[set[str], ...]:
        """As process-request runs a calibration (``_run_one``) and its subflow begins."""
        with tags("calib:ChannelT0"), turns.turn():
            flow_run = set(TagsContext.get().current_tags)  # what its flow run is made with
            turns.begun()  # the first line of the subflow's body
            task_runs = set(TagsContext.get().current_tags)  # what its task runs are made with
        return flow_run, task_runs, set(TagsContext.get().current_tags)

    with tags("request:17", "kind:prompt"):
        flow_run, task_runs, after = contextvars.copy_context().run(one_calibration)
    assert flow_run == {"request:17", "kind:prompt", "calib:ChannelT0"}
    assert task_runs == set()
    assert after == {"request:17", "kind:prompt"}  # the next subflow is tagged again
    assert turns._lock.acquire(blocking=False)  # the turn was given back
