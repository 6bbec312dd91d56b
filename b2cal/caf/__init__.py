"""The calibration API: what a calibration plugin (registered under the entry-point group
``b2cal.calibrations``) is made of — a :class:`Calibration` with its :class:`Collector`, which
fills an :class:`Accumulator` per run, and its :class:`Algorithm`, which turns the merged
accumulators into payloads (or asks to iterate) — with the names they use. Everything else in
``b2cal.caf`` is the engine that runs them; a plugin needs only what is exported here.
"""

from b2cal.caf.accumulator import Accumulator, Column
from b2cal.caf.calibration import (
    Algorithm,
    AlgorithmContext,
    AlgorithmResult,
    Calibration,
    Collector,
    Events,
    Execution,
    ExpertSettings,
    PayloadDoc,
    PayloadLookup,
    RunContext,
    Strategy,
    StrategyName,
    Validation,
    ValidationReport,
    as_float_list,
    as_float_matrix,
)
from b2cal.core.iov import ExpRun, IoV

__all__ = [
    "Accumulator",
    "Algorithm",
    "AlgorithmContext",
    "AlgorithmResult",
    "Calibration",
    "Collector",
    "Column",
    "Events",
    "Execution",
    "ExpRun",
    "ExpertSettings",
    "IoV",
    "PayloadDoc",
    "PayloadLookup",
    "RunContext",
    "Strategy",
    "StrategyName",
    "Validation",
    "ValidationReport",
    "as_float_list",
    "as_float_matrix",
]
