"""The toy detector's four reference calibrations, as ``b2cal.calibrations`` plugins.

Each factory returns a fresh :class:`~b2cal.caf.calibration.Calibration`; the entry points in
``pyproject.toml`` name them. Together they exercise what real calibrations need from the engine:
run merging at low statistics (ChannelT0, BeamSpot), dependencies whose payloads change the
result (ChannelGain on ChannelT0, BeamSpot on ModuleAlignment) and iteration (ModuleAlignment).
The physics lives in one module per calibration (``timing`` for ChannelT0, ``gain``,
``alignment``, ``beamspot``) with the shared peak fit in ``peak_fit``; docs/toy-detector.md
describes the contract they close on. Each declares expert settings (its ``...Settings``
model) that ``caf run --config`` may override.
"""

from __future__ import annotations

from b2cal.caf.calibration import Calibration, Strategy, StrategyName
from b2cal.toy.calibrations.alignment import NAME as MODULE_ALIGNMENT
from b2cal.toy.calibrations.alignment import (
    ModuleAlignmentAlgorithm,
    ModuleAlignmentCollector,
    ModuleAlignmentSettings,
    validate_module_alignment,
)
from b2cal.toy.calibrations.beamspot import NAME as BEAM_SPOT
from b2cal.toy.calibrations.beamspot import (
    BeamSpotAlgorithm,
    BeamSpotCollector,
    BeamSpotSettings,
    validate_beam_spot,
)
from b2cal.toy.calibrations.gain import NAME as CHANNEL_GAIN
from b2cal.toy.calibrations.gain import (
    ChannelGainAlgorithm,
    ChannelGainCollector,
    ChannelGainSettings,
    validate_channel_gain,
)
from b2cal.toy.calibrations.timing import NAME as CHANNEL_T0
from b2cal.toy.calibrations.timing import (
    ChannelT0Algorithm,
    ChannelT0Collector,
    ChannelT0Settings,
    validate_channel_t0,
)

__all__ = ["beam_spot", "channel_gain", "channel_t0", "module_alignment"]

#: Expert responsible for the reference calibrations (who signs off their payloads).
OWNER = "toy-detector calibration experts <b2cal-toy@localhost>"
#: Files per collector job: a toy file takes well under a second to collect, so a few per job
#: keep the job overhead small while still giving the backends parallel work.
FILES_PER_JOB = 4

_RUN_BY_RUN = Strategy(name=StrategyName.SEQUENTIAL_RUN_BY_RUN)
_SINGLE_IOV = Strategy(name=StrategyName.SINGLE_IOV)


def channel_t0() -> Calibration:
    """Channel time offsets, run by run (low-statistics runs merged with the next)."""
    return Calibration(
        name=CHANNEL_T0,
        collector=ChannelT0Collector(),
        algorithm=ChannelT0Algorithm(),
        input_streams=("bhabha",),
        strategy=_RUN_BY_RUN,
        max_files_per_job=FILES_PER_JOB,
        validation=validate_channel_t0,
        settings=ChannelT0Settings(),
        owner=OWNER,
        description="t0 of the 64 channels (ns): fit of each channel's hit-time peak",
        units={"t0": "ns"},
    )


def channel_gain() -> Calibration:
    """Channel gains over the whole range, from hits within the t0 window of ChannelT0."""
    return Calibration(
        name=CHANNEL_GAIN,
        collector=ChannelGainCollector(),
        algorithm=ChannelGainAlgorithm(),
        input_streams=("bhabha",),
        depends_on=(CHANNEL_T0,),
        strategy=_SINGLE_IOV,
        max_files_per_job=FILES_PER_JOB,
        validation=validate_channel_gain,
        settings=ChannelGainSettings(),
        owner=OWNER,
        description="gain of the 64 channels: fit of each pulse-height peak of in-time hits",
    )


def module_alignment() -> Calibration:
    """Module offsets over the whole range, iterated until they move by less than 1 µm."""
    return Calibration(
        name=MODULE_ALIGNMENT,
        collector=ModuleAlignmentCollector(),
        algorithm=ModuleAlignmentAlgorithm(),
        input_streams=("mumu",),
        max_iterations=6,
        strategy=_SINGLE_IOV,
        max_files_per_job=FILES_PER_JOB,
        validation=validate_module_alignment,
        settings=ModuleAlignmentSettings(),
        owner=OWNER,
        description="offsets du of the 16 modules (µm; 0 and 15 fixed) from track residuals",
        units={"du": "µm"},
    )


def beam_spot() -> Calibration:
    """Beam spot position run by run, from vertices corrected with ModuleAlignment."""
    return Calibration(
        name=BEAM_SPOT,
        collector=BeamSpotCollector(),
        algorithm=BeamSpotAlgorithm(),
        input_streams=("mumu",),
        depends_on=(MODULE_ALIGNMENT,),
        strategy=_RUN_BY_RUN,
        max_files_per_job=FILES_PER_JOB,
        validation=validate_beam_spot,
        settings=BeamSpotSettings(),
        owner=OWNER,
        description="mean vertex position (cm), x corrected for the module alignment",
        units={"x": "cm", "y": "cm", "z": "cm"},
    )
