"""The toy detector's constants, file layout and truth record (docs/toy-detector.md).

Everything that the toy detector's contract fixes as a number or a name lives here, once: the
generator, the reference calibrations and the closure check import it instead of repeating it,
so the contract can only be implemented one way. :class:`ToyTruth` is what a generator drew; it
is written to ``<storage>/truth.json`` so that a closure check (or a person) can compare
calibration output with the values that really produced the data.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from b2cal.core.files import atomic_write_bytes
from b2cal.errors import B2CalError

FloatArray = npt.NDArray[np.float64]

# --- detector geometry -------------------------------------------------------------------
NUM_CHANNELS = 64
NUM_MODULES = 16
#: Modules whose alignment is fixed to zero; they remove the global shift and shear modes.
REFERENCE_MODULES = (0, NUM_MODULES - 1)
#: Middle modules a track can have (it also crosses the modules on either side).
FIRST_TRACK_MODULE = 1
LAST_TRACK_MODULE = NUM_MODULES - 2

# --- hits (stream ``bhabha``) ------------------------------------------------------------
HITS_PER_EVENT_MEAN = 8.0
SIGNAL_FRACTION = 0.9
TIME_RESOLUTION_NS = 1.5
SIGNAL_ADC_MEAN = 1.0
SIGNAL_ADC_SIGMA = 0.08
BACKGROUND_TIME_RANGE_NS = (-100.0, 100.0)
BACKGROUND_ADC_MEAN = 0.5
T0_RANGE_NS = (-20.0, 20.0)
GAIN_RANGE = (0.7, 1.3)

# --- tracks and vertices (stream ``mumu``) ------------------------------------------------
TRACKS_PER_EVENT_MEAN = 2.0
TRACK_X_RANGE_UM = (-1000.0, 1000.0)
POSITION_RESOLUTION_UM = 15.0
OUTLIER_PROBABILITY = 0.05
OUTLIER_RANGE_UM = (-1000.0, 1000.0)
DELTA_RANGE_UM = (-250.0, 250.0)
#: Converts the mean misalignment (µm) into the vertex x shift (cm): lever arm 0.1 × 1e-4 cm/µm.
VERTEX_SHIFT_PER_UM_CM = 1e-5
BEAM_SIZE_CM = (0.0010, 0.0002, 0.035)
VERTEX_RESOLUTION_CM = (0.0020, 0.0020, 0.0030)
BEAMSPOT_RANGE_CM = ((-0.05, 0.05), (-0.02, 0.02), (-0.5, 0.5))

# --- files --------------------------------------------------------------------------------
STREAM_BHABHA = "bhabha"
STREAM_MUMU = "mumu"
STREAMS = (STREAM_BHABHA, STREAM_MUMU)
HIT_BRANCHES = ("hit_channel", "hit_time", "hit_adc")
TRACK_BRANCHES = ("trk_module", "trk_u_prev", "trk_u", "trk_u_next")
VERTEX_BRANCHES = ("vtx_x", "vtx_y", "vtx_z")
TRUTH_FILENAME = "truth.json"


def vertex_x_shift_cm(delta: Sequence[float] | FloatArray) -> float:
    """The x shift of every vertex caused by misalignment ``delta`` (µm) of modules 1..14.

    A collector subtracts the same function of its alignment constants, which is why it lives
    here rather than in the generator.
    """
    inner = np.asarray(delta, dtype=np.float64)[FIRST_TRACK_MODULE : LAST_TRACK_MODULE + 1]
    return float(inner.mean()) * VERTEX_SHIFT_PER_UM_CM


@dataclass(frozen=True)
class ToySettings:
    """The generator arguments that are not truth values, kept so a file can be regenerated.

    Checked when made (:class:`B2CalError` if a count is impossible); the runs of t0 jumps and
    beam-spot changes are kept sorted. Whether those runs lie in the generated range is checked
    by the generator, which knows the range.
    """

    files_per_run: int
    events: int
    t0_jumps: list[int] = field(default_factory=list)
    beamspot_changes: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.files_per_run < 1:
            raise B2CalError(f"files per run must be at least 1, not {self.files_per_run}")
        if self.events < 0:
            raise B2CalError(f"events per file must be >= 0, not {self.events}")
        object.__setattr__(self, "t0_jumps", sorted(self.t0_jumps))
        object.__setattr__(self, "beamspot_changes", sorted(self.beamspot_changes))

    def to_dict(self) -> dict[str, Any]:
        return {
            "files_per_run": self.files_per_run,
            "events": self.events,
            "t0_jumps": list(self.t0_jumps),
            "beamspot_changes": list(self.beamspot_changes),
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ToySettings:
        return cls(
            files_per_run=int(doc["files_per_run"]),
            events=int(doc["events"]),
            t0_jumps=[int(r) for r in doc.get("t0_jumps", [])],
            beamspot_changes=[int(r) for r in doc.get("beamspot_changes", [])],
        )


@dataclass(frozen=True)
class RunTruth:
    """The truth that may change from run to run: channel t0 (ns) and the beam spot (cm)."""

    t0: list[float]
    beamspot: tuple[float, float, float]

    def to_dict(self) -> dict[str, Any]:
        x, y, z = self.beamspot
        return {"t0": list(self.t0), "beamspot": {"x": x, "y": y, "z": z}}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> RunTruth:
        spot = doc["beamspot"]
        return cls(
            t0=[float(v) for v in doc["t0"]],
            beamspot=(float(spot["x"]), float(spot["y"]), float(spot["z"])),
        )


@dataclass(frozen=True)
class ToyTruth:
    """Everything a generator drew for one experiment and run range, plus how it was called.

    ``gain`` and ``delta`` hold for the whole range; ``per_run`` holds each run's t0 and beam
    spot. ``low_stat`` maps the runs generated with fewer events to their events per file.
    """

    experiment: int
    runs: list[int]
    seed: int
    gain: list[float]
    delta: list[float]
    per_run: dict[int, RunTruth]
    low_stat: dict[int, int]
    settings: ToySettings

    def __post_init__(self) -> None:
        _check_length("gain", self.gain, NUM_CHANNELS)
        _check_length("delta", self.delta, NUM_MODULES)
        if any(self.delta[m] != 0.0 for m in REFERENCE_MODULES):
            raise B2CalError(f"truth: delta of the reference modules {REFERENCE_MODULES} must be 0")
        if sorted(self.per_run) != sorted(self.runs):
            raise B2CalError("truth: per_run must hold exactly the runs of the range")
        for run, truth in self.per_run.items():
            _check_length(f"t0 of run {run}", truth.t0, NUM_CHANNELS)
        if not set(self.low_stat) <= set(self.runs):
            raise B2CalError("truth: low_stat names runs outside the range")

    def t0(self, run: int) -> FloatArray:
        """The 64 channel t0 (ns) of ``run``."""
        return np.asarray(self._run(run).t0, dtype=np.float64)

    def beamspot(self, run: int) -> tuple[float, float, float]:
        """The beam spot position (x, y, z) in cm of ``run``."""
        return self._run(run).beamspot

    def gain_array(self) -> FloatArray:
        return np.asarray(self.gain, dtype=np.float64)

    def delta_array(self) -> FloatArray:
        return np.asarray(self.delta, dtype=np.float64)

    def events_per_file(self, run: int) -> int:
        """Events in each file of ``run``: the low-statistics count if it has one."""
        self._run(run)
        return self.low_stat.get(run, self.settings.events)

    def _run(self, run: int) -> RunTruth:
        try:
            return self.per_run[run]
        except KeyError:
            raise B2CalError(
                f"run {run} is not in the toy truth (runs {self.runs[0]}-{self.runs[-1]})"
            ) from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment,
            "runs": list(self.runs),
            "seed": self.seed,
            "gain": list(self.gain),
            "delta": list(self.delta),
            "per_run": {str(run): self.per_run[run].to_dict() for run in self.runs},
            "low_stat": {str(run): n for run, n in sorted(self.low_stat.items())},
            "settings": self.settings.to_dict(),
        }

    def to_json(self) -> str:
        """Indented JSON with each list of numbers on one line, so a person can read it.

        Python's float repr makes the values round-trip exactly.
        """
        text = json.dumps(self.to_dict(), indent=1)
        return _FLAT_LIST.sub(_join_list, text) + "\n"

    def write(self, path: Path) -> None:
        """Write atomically, so an interrupted generator never leaves half a truth behind."""
        atomic_write_bytes(Path(path), self.to_json().encode())

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ToyTruth:
        return cls(
            experiment=int(doc["experiment"]),
            runs=[int(r) for r in doc["runs"]],
            seed=int(doc["seed"]),
            gain=[float(v) for v in doc["gain"]],
            delta=[float(v) for v in doc["delta"]],
            per_run={int(r): RunTruth.from_dict(v) for r, v in doc["per_run"].items()},
            low_stat={int(r): int(n) for r, n in doc.get("low_stat", {}).items()},
            settings=ToySettings.from_dict(doc["settings"]),
        )

    @classmethod
    def read(cls, path: Path) -> ToyTruth:
        """Read a ``truth.json``; any problem with it is a :class:`B2CalError`."""
        path = Path(path)
        try:
            doc = json.loads(path.read_text())
            return cls.from_dict(doc)
        except OSError as exc:
            raise B2CalError(f"cannot read toy truth {path}: {exc.strerror}") from exc
        except B2CalError as exc:
            raise B2CalError(f"{path}: {exc}") from exc
        except KeyError as exc:
            raise B2CalError(f"{path} is not a toy truth file: it has no {exc}") from exc
        except (ValueError, TypeError, AttributeError) as exc:
            raise B2CalError(f"{path} is not a toy truth file ({exc})") from exc


#: A JSON list holding no object or list, as laid out by ``json.dumps(..., indent=1)``.
_FLAT_LIST = re.compile(r"\[([^\[\]{}]*)\]")


def _join_list(match: re.Match[str]) -> str:
    items = [item.strip() for item in match.group(1).split(",")]
    return "[" + ", ".join(item for item in items if item) + "]"


def _check_length(what: str, values: Sequence[float], expected: int) -> None:
    if len(values) != expected or not all(math.isfinite(v) for v in values):
        raise B2CalError(f"truth: {what} must hold {expected} finite numbers, not {len(values)}")
