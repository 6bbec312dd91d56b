"""A minimal calibration for engine tests: counts hits per run, needs a minimum per IoV.

Its payload is the hit count, so strategies, merging and resume can be checked exactly
without any fitting. Importable by worker processes (tests/ is on sys.path).
"""

from __future__ import annotations

import os
import signal
from typing import Any

import awkward as ak

from b2cal.caf.accumulator import Accumulator
from b2cal.caf.calibration import (
    Algorithm,
    AlgorithmContext,
    AlgorithmResult,
    Calibration,
    Collector,
    Execution,
    ExpertSettings,
    RunContext,
    Strategy,
    StrategyName,
)


class HitCounter(Collector):
    branches = ("hit_channel",)

    def process(self, events: Any, run: RunContext) -> Accumulator:
        return Accumulator(hits=int(ak.sum(ak.num(events["hit_channel"]))), events=len(events))


class CountingSettings(ExpertSettings):
    collector_fields = ()  # the collector reads none: changing a setting collects nothing again

    #: Hits an IoV needs.
    minimum: int = 1000


class HitThreshold(Algorithm):
    """OK with payload {hits, runs} when the group has at least ``minimum`` hits (a setting);
    asks to iterate until the payload's ``step`` reaches ``iterations``."""

    def __init__(self, iterations: int = 0) -> None:
        self.iterations = iterations

    def execute(self, data: Accumulator, context: AlgorithmContext) -> Execution:
        hits = data.get("hits", 0)
        if hits < CountingSettings.of(context).minimum:
            return Execution(AlgorithmResult.NOT_ENOUGH_DATA, message=f"{hits} hits")
        previous = context.payload("Counting")
        step = previous["step"] + 1 if previous else 0
        code = AlgorithmResult.ITERATE if step < self.iterations else AlgorithmResult.OK
        doc = {"hits": hits, "runs": [r.run for r in context.runs], "step": step}
        return Execution(code, payloads={"Counting": doc}, metrics={"hits": hits})


def counting(
    strategy: StrategyName = StrategyName.SEQUENTIAL_RUN_BY_RUN,
    minimum: int = 1000,
    iterations: int = 0,
    max_iterations: int = 1,
    max_files_per_job: int = 1,
) -> Calibration:
    return Calibration(
        name="Counting",
        collector=HitCounter(),
        algorithm=HitThreshold(iterations),
        settings=CountingSettings(minimum=minimum),
        input_streams=("bhabha",),
        strategy=Strategy(name=strategy),
        max_iterations=max_iterations,
        max_files_per_job=max_files_per_job,
    )


class Exploding(Collector):
    """A collector with a bug: every call raises."""

    branches = ("hit_channel",)

    def process(self, events: Any, run: RunContext) -> Accumulator:
        raise RuntimeError("collector exploded")


class PayloadLess(Algorithm):
    """An algorithm with a bug: OK, but no payload."""

    def execute(self, data: Accumulator, context: AlgorithmContext) -> Execution:
        return Execution(AlgorithmResult.OK)


class Dying(Collector):
    """A collector whose worker process dies (as when the OOM killer strikes)."""

    branches = ("hit_channel",)

    def process(self, events: Any, run: RunContext) -> Accumulator:
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable")


class BreaksOnRun2(HitCounter):
    """A collector that breaks on the files of run 2 (a bug, or a poisonous input)."""

    def process(self, events: Any, run: RunContext) -> Accumulator:
        if run.exprun.run == 2:
            raise RuntimeError("unexpected value in hit_time")
        return super().process(events, run)
