"""The baseline of engine_overhead.py: the four reference calibrations by a bare script.

What a careful expert would write by hand with ``multiprocessing``: read each file with uproot,
call the same collector on it in a process pool, sum per run, call the same algorithm per run
(or once over all runs), iterate ModuleAlignment, keep payloads in dicts. No job files, no
resume, no checks, no output database: the least work that gives the same payloads.

Usage: python bare_caf.py STORAGE EXP FIRST LAST
"""

from __future__ import annotations

import multiprocessing
import sys
from pathlib import Path
from typing import Any

import uproot

from b2cal.caf.accumulator import Accumulator
from b2cal.caf.calibration import AlgorithmContext, AlgorithmResult, Calibration, RunContext
from b2cal.caf.calibration import StrategyName as S
from b2cal.catalog.storage import find_files
from b2cal.core.iov import ExpRun
from b2cal.toy.calibrations import beam_spot, channel_gain, channel_t0, module_alignment

#: payloads[name][run] -> constants, filled as calibrations finish.
Payloads = dict[str, dict[ExpRun, dict[str, Any]]]
PAYLOADS: Payloads = {}


def collect_one(
    job: tuple[Calibration, Path, ExpRun, int, Payloads],
) -> tuple[ExpRun, Accumulator]:
    calibration, path, exprun, iteration, payloads = job
    with uproot.open(path) as source:
        events = source["events"].arrays(list(calibration.collector.branches))

    def lookup(name: str, run: ExpRun) -> dict[str, Any] | None:
        return payloads.get(name, {}).get(run)

    return exprun, calibration.collector.process(events, RunContext(exprun, iteration, lookup))


def calibrate(pool: Any, calibration: Calibration, storage: Path, exp: int, runs: range) -> None:
    files = find_files(storage, exp, runs, calibration.input_streams)

    def lookup(name: str, run: ExpRun) -> dict[str, Any] | None:
        return PAYLOADS.get(name, {}).get(run)

    for iteration in range(calibration.max_iterations):
        per_run: dict[ExpRun, Accumulator] = {}
        jobs = [(calibration, f.path, f.exprun, iteration, PAYLOADS) for f in files]
        for exprun, acc in pool.map(collect_one, jobs):
            per_run[exprun] = per_run[exprun] + acc if exprun in per_run else acc
        if calibration.strategy.name is S.SINGLE_IOV:
            groups = [sorted(per_run)]
        else:
            groups = [[run] for run in sorted(per_run)]
        results = {}
        for group in groups:
            data = sum((per_run[r] for r in group), Accumulator())
            context = AlgorithmContext(tuple(group), iteration, lookup)
            execution = calibration.algorithm.execute(data, context)
            assert execution.result in (AlgorithmResult.OK, AlgorithmResult.ITERATE), execution
            for run in group:
                results[run] = (execution.result, execution.payloads[calibration.name])
        PAYLOADS[calibration.name] = {run: doc for run, (_, doc) in results.items()}
        if all(code is AlgorithmResult.OK for code, _ in results.values()):
            break


def main() -> int:
    storage, exp, first, last = Path(sys.argv[1]), *map(int, sys.argv[2:5])
    runs = range(first, last + 1)
    with multiprocessing.get_context("fork").Pool(2) as pool:
        for factory in (channel_t0, module_alignment, channel_gain, beam_spot):
            calibrate(pool, factory(), storage, exp, runs)
    print({name: len(p) for name, p in PAYLOADS.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
