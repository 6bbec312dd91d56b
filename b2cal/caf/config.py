"""Per-calibration overrides from a TOML file (``caf run --config FILE``).

::

    [ChannelT0]
    max_iterations = 1
    max_files_per_job = 2
    max_jobs = 50

    [ChannelT0.strategy]                  # the IoV strategy and its parameters
    name = "sequential_boundaries"
    boundaries = [[1, 1], [1, 5]]         # (experiment, run) where payload IoVs start

    [ChannelT0.settings]                  # the calibration's expert settings
    min_peak_hits = 80

A section names a registered calibration; a section for one that is not part of the run is
ignored, one for an unknown calibration is refused. Unknown keys and wrong types are refused
naming the key and the file. Each calibration's section is recorded with its output: it is part
of the run's identity (a resume with another section is refused; ``caf run --rerun`` accepts a
changed section for the calibrations it recomputes).
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from b2cal.caf.calibration import Calibration, Strategy
from b2cal.caf.graph import with_dependencies
from b2cal.caf.registry import load
from b2cal.errors import ConfigError

#: What a calibration's section may set, besides ``strategy`` and ``settings``.
_NUMBERS = ("max_iterations", "max_files_per_job", "max_jobs")
KEYS = (*_NUMBERS, "strategy", "settings")

#: Overrides by calibration name, as recorded: plain JSON values.
Overrides = dict[str, dict[str, Any]]


def read_config(path: Path, known: Iterable[str]) -> Overrides:
    """The sections of ``path`` (ConfigError for an unreadable file, an unknown calibration or
    key). ``known`` are the registered calibrations."""
    try:
        doc = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(path, exc.strerror or str(exc)) from None
    except UnicodeDecodeError:
        raise ConfigError(path, "not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, f"not TOML: {exc}") from None
    names = set(known)
    overrides: Overrides = {}
    for name, section in doc.items():
        if name not in names:
            raise ConfigError(path, "no calibration of that name is registered", key=name)
        if not isinstance(section, dict):
            raise ConfigError(path, "must be a table of settings", key=name)
        for key in section:
            if key not in KEYS:
                allowed = ", ".join(KEYS)
                raise ConfigError(path, f"unknown key (allowed: {allowed})", key=f"{name}.{key}")
        overrides[name] = section
    return overrides


def configure(
    calibration: Calibration, section: Mapping[str, Any], file: Path | str
) -> Calibration:
    """``calibration`` with ``section`` applied (ConfigError naming the key if it does not fit)."""
    name = calibration.name
    update: dict[str, Any] = {}
    for key in _NUMBERS:
        if key in section:
            update[key] = section[key]
    if "strategy" in section:
        try:
            update["strategy"] = Strategy.model_validate(section["strategy"])
        except ValidationError as exc:
            raise _invalid(file, f"{name}.strategy", exc) from None
    if "settings" in section:
        update["settings"] = _settings(calibration, section["settings"], file)
    try:
        return Calibration.model_validate({**_fields(calibration), **update})
    except ValidationError as exc:
        raise _invalid(file, name, exc) from None


def _settings(calibration: Calibration, given: Any, file: Path | str) -> Any:
    key = f"{calibration.name}.settings"
    if calibration.settings is None:
        raise ConfigError(file, "this calibration declares no expert settings", key=key)
    if not isinstance(given, dict):
        raise ConfigError(file, "must be a table", key=key)
    model = type(calibration.settings)
    try:
        return model.model_validate({**calibration.settings.model_dump(), **given})
    except ValidationError as exc:
        raise _invalid(file, key, exc) from None


def _fields(calibration: Calibration) -> dict[str, Any]:
    return {name: getattr(calibration, name) for name in Calibration.model_fields}


def _invalid(file: Path | str, key: str, exc: ValidationError) -> ConfigError:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    full = f"{key}.{where}" if where else key
    if error["type"] == "extra_forbidden":
        return ConfigError(file, "unknown key", key=full)
    if isinstance(error.get("input"), bool):  # TOML's true is no number (the models are strict)
        return ConfigError(file, f"expected a number, not {str(error['input']).lower()}", key=full)
    return ConfigError(file, error["msg"], key=full)


def configured_calibrations(
    names: Iterable[str], overrides: Overrides, file: Path | str
) -> tuple[dict[str, Calibration], Overrides, list[str]]:
    """The named calibrations and everything they depend on, each with its section of
    ``overrides`` applied (``file`` names where the sections came from, for messages).

    Returns the configured calibrations, the sections that apply to them, and the names that
    were added as dependencies (so the caller can say so).
    """
    found, added = with_dependencies(names, load)
    used = {name: section for name, section in overrides.items() if name in found}
    configured = {
        name: configure(cal, used[name], file) if name in used else cal
        for name, cal in found.items()
    }
    return configured, used, added
