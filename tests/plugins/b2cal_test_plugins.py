"""Calibration plugins for command-line tests, registered like an experiment's own package.

The folder holding this module and its ``.dist-info`` goes on PYTHONPATH of a ``b2cal``
subprocess: that is exactly how an installed plugin package is found (entry points), so these
tests also cover the plugin mechanism.
"""

from __future__ import annotations

import time
from typing import Any

from counting import HitCounter, counting

from b2cal.caf.accumulator import Accumulator
from b2cal.caf.calibration import Calibration, RunContext
from b2cal.toy.calibrations import channel_t0
from b2cal.toy.calibrations.timing import ChannelT0Collector

#: Seconds a SlowT0 collector job sleeps per file, so a test can kill the run mid-collection.
SLEEP_PER_FILE = 0.4


class SlowT0Collector(ChannelT0Collector):
    def process(self, events: Any, run: RunContext) -> Accumulator:
        time.sleep(SLEEP_PER_FILE)
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
