"""Finding input files on a storage element laid out as in TOY_DETECTOR.md.

Files live at::

    <storage>/e<EXP:04d>/r<RUN:05d>/<stream>/<stream>.e<EXP:04d>.r<RUN:05d>.f<IDX:05d>.root

The path says which experiment, run and stream a file belongs to, so finding the files of a
request needs no file to be opened (the collector checks the metadata inside when it reads).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from b2cal.caf.iov import ExpRun
from b2cal.errors import B2CalError

_FILE = re.compile(r"^(?P<stream>\w+)\.e(?P<exp>\d{4,})\.r(?P<run>\d{5,})\.f(?P<idx>\d{5,})\.root$")


@dataclass(frozen=True, order=True)
class InputFile:
    """A data file of one run and stream. Ordering (exp, run, stream, index) is the job order."""

    exp: int
    run: int
    stream: str
    index: int
    path: Path

    @property
    def exprun(self) -> ExpRun:
        return ExpRun(self.exp, self.run)

    def to_json(self) -> dict[str, object]:
        return {
            "exp": self.exp,
            "run": self.run,
            "stream": self.stream,
            "index": self.index,
            "path": str(self.path),
        }

    @classmethod
    def from_json(cls, doc: dict[str, object]) -> InputFile:
        return cls(
            int(str(doc["exp"])),
            int(str(doc["run"])),
            str(doc["stream"]),
            int(str(doc["index"])),
            Path(str(doc["path"])),
        )


def parse_path(path: Path) -> InputFile | None:
    """The file's coordinates from its name, or None if the name is not a data file's."""
    match = _FILE.match(path.name)
    if match is None:
        return None
    return InputFile(int(match["exp"]), int(match["run"]), match["stream"], int(match["idx"]), path)


def find_files(
    storage: Path, exp: int, runs: Sequence[int] | range, streams: Iterable[str]
) -> list[InputFile]:
    """Every data file of ``streams`` for the given runs of ``exp``, sorted.

    Raises B2CalError when the storage folder does not exist. An empty result is returned as
    such; the caller decides whether that is an error.
    """
    storage = Path(storage)
    if not storage.is_dir():
        raise B2CalError(f"storage folder {storage} does not exist")
    wanted = set(streams)
    exp_dir = storage / f"e{exp:04d}"
    if not exp_dir.is_dir():
        return []
    # List what is there rather than probe every run number: a wide range costs nothing.
    run_dirs = [d for d in exp_dir.iterdir() if re.fullmatch(r"r\d{5,}", d.name)]
    found = []
    for run_dir in run_dirs:
        run = int(run_dir.name[1:])
        if run not in runs:
            continue
        for stream in sorted(wanted):
            for path in (run_dir / stream).glob("*.root"):
                info = parse_path(path)
                if info and (info.exp, info.run, info.stream) == (exp, run, stream):
                    found.append(info)
    return sorted(found)
