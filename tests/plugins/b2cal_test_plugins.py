"""Calibration plugins for command-line tests, registered like an experiment's own package.

The folder holding this module and its ``.dist-info`` goes on PYTHONPATH of a ``b2cal``
subprocess: that is exactly how an installed plugin package is found (entry points), so these
tests also cover the plugin mechanism.
"""

from __future__ import annotations

import os
import time
from typing import Any

from counting import HitCounter, counting

from b2cal.caf import Accumulator
from b2cal.caf.calibration import Calibration, RunContext
from b2cal.toy.calibrations import channel_t0
from b2cal.toy.calibrations.timing import ChannelT0Collector

#: Seconds a SlowT0 collector job sleeps per file, so a test can kill the run mid-collection;
#: a test that must do more between seeing a job end and the kill asks for longer.
SLEEP_PER_FILE = float(os.environ.get("B2CAL_TEST_SLOW_SECONDS", "0.4"))


def sleep_per_file() -> float:
    """:data:`SLEEP_PER_FILE`, unless ``$B2CAL_TEST_FLAKY/slow-seconds`` says otherwise (a
    stack test whose runs are started by a worker it cannot give an environment)."""
    markers = os.environ.get("B2CAL_TEST_FLAKY")
    said = os.path.join(markers, "slow-seconds") if markers else None
    if said and os.path.exists(said):
        with open(said) as handle:
            return float(handle.read())
    return SLEEP_PER_FILE


class SlowT0Collector(ChannelT0Collector):
    def process(self, events: Any, run: RunContext) -> Accumulator:
        time.sleep(sleep_per_file())
        return super().process(events, run)


def slow_t0() -> Calibration:
    """The reference ChannelT0, with a slow collector and one file per job."""
    return channel_t0().model_copy(
        update={"name": "SlowT0", "collector": SlowT0Collector(), "max_files_per_job": 1}
    )


def counting_plugin() -> Calibration:
    """The exact counting calibration of the engine tests (tests/counting.py), as a plugin."""
    return counting(minimum=2000, max_files_per_job=2)


def counting_child() -> Calibration:
    """A calibration that depends on Counting (its collector reads Counting's payload)."""
    return counting().model_copy(
        update={
            "name": "CountingChild",
            "depends_on": ("Counting",),
            "collector": ChildCounter(),
            "settings": None,  # it declares none: its algorithm uses the defaults
        }
    )


class ChildCounter(HitCounter):
    """Counts hits, and needs the Counting payload of each run to exist."""

    def process(self, events: Any, run: RunContext) -> Accumulator:
        if run.payload("Counting") is None:
            raise RuntimeError(f"no Counting payload for {run.exprun}")
        return super().process(events, run)


def cycle_a() -> Calibration:
    return channel_t0().model_copy(update={"name": "CycleA", "depends_on": ("CycleB",)})


def cycle_b() -> Calibration:
    return channel_t0().model_copy(update={"name": "CycleB", "depends_on": ("CycleA",)})


#: Seconds a SleepyT0 collector job sleeps per file: long enough that a driver killed right
#: after submitting leaves its batch jobs queued or running.
SLEEPY_SECONDS = 4.0


class SleepyT0Collector(ChannelT0Collector):
    def process(self, events: Any, run: RunContext) -> Accumulator:
        time.sleep(SLEEPY_SECONDS)
        return super().process(events, run)


def sleepy_t0() -> Calibration:
    """The reference ChannelT0, sleeping per file, one file per job."""
    return channel_t0().model_copy(
        update={"name": "SleepyT0", "collector": SleepyT0Collector(), "max_files_per_job": 1}
    )


class FlakyT0Collector(ChannelT0Collector):
    """Fails a job of run R once if ``$B2CAL_TEST_FLAKY/rR.fail-once`` exists (removing it),
    every time if ``rR.fail-always`` does, and kills its own process once for ``rR.kill-once``:
    what a flaky node, a poisonous input or a worker killed for its memory look like to the
    backend."""

    def process(self, events: Any, run: RunContext) -> Accumulator:
        import os
        from pathlib import Path

        markers = os.environ.get("B2CAL_TEST_FLAKY")
        if markers:
            once = Path(markers) / f"r{run.exprun.run}.fail-once"
            if (Path(markers) / f"r{run.exprun.run}.fail-always").exists():
                raise RuntimeError(f"run {run.exprun.run} fails every time")
            if once.exists():
                once.unlink()
                raise RuntimeError(f"run {run.exprun.run} fails once")
            killed = Path(markers) / f"r{run.exprun.run}.kill-once"
            if killed.exists():  # the process dies as if killed (out of memory, say)
                killed.unlink()
                os.kill(os.getpid(), 9)
        return super().process(events, run)


def flaky_t0() -> Calibration:
    """The reference ChannelT0 with a collector that fails where markers say, one file a job."""
    return channel_t0().model_copy(
        update={"name": "FlakyT0", "collector": FlakyT0Collector(), "max_files_per_job": 1}
    )
