"""How data files are named on a storage element, in one place (reader and writers share it).

::

    <storage>/e<EXP:04d>/r<RUN:05d>/<stream>/<stream>.e<EXP:04d>.r<RUN:05d>.f<IDX:05d>.root

The path says which experiment, run and stream a file belongs to, so finding the files of a
request needs no file to be opened. Inside, a ROOT file holds the ``events`` tree and a
``metadata`` string of JSON (experiment, run, stream, nevents), which the reader checks
against the path (:mod:`b2cal.catalog.rootfile`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

#: The tree of events in every data file.
EVENTS_TREE = "events"
#: The JSON string object of every data file: at least experiment, run, stream, nevents.
METADATA = "metadata"

_NAME = re.compile(r"^(?P<stream>\w+)\.e(?P<exp>\d{4,})\.r(?P<run>\d{5,})\.f(?P<idx>\d{5,})\.root$")
_RUN_FOLDER = re.compile(r"^r\d{5,}$")


@dataclass(frozen=True)
class DataFileName:
    """What a data file's name says about it."""

    exp: int
    run: int
    stream: str
    index: int


def data_file_path(storage: Path, exp: int, run: int, stream: str, index: int) -> Path:
    """Where file ``index`` of ``stream`` for ``(exp, run)`` lives under ``storage``."""
    name = f"{stream}.e{exp:04d}.r{run:05d}.f{index:05d}.root"
    return Path(storage) / exp_folder(exp) / f"r{run:05d}" / stream / name


def exp_folder(exp: int) -> str:
    return f"e{exp:04d}"


def run_of_folder(name: str) -> int | None:
    """The run of a run folder's name (``r00012`` -> 12), None for other names."""
    return int(name[1:]) if _RUN_FOLDER.match(name) else None


def parse_data_file_name(path: Path) -> DataFileName | None:
    """The coordinates in a data file's name, or None if it is not a data file's name."""
    match = _NAME.match(Path(path).name)
    if match is None:
        return None
    return DataFileName(int(match["exp"]), int(match["run"]), match["stream"], int(match["idx"]))
