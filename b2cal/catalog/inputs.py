"""Input files of a calibration: what they are, how they are listed, how a change is noticed.

An :class:`InputFile` is a data file of one run and stream. Files come from scanning a storage
element (:mod:`b2cal.catalog.storage`) or from a list the user gives (:func:`read_file_list`,
``caf run --files-from``), whose entries are checked by reading each file's metadata.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from b2cal.catalog.naming import parse_data_file_name
from b2cal.catalog.rootfile import read_metadata
from b2cal.core.iov import ExpRun
from b2cal.errors import B2CalError, BadInputFile

#: Sorts files without a standard name after those with one, within their run and stream.
_NO_INDEX = 2**62
#: How many unusable listed files an error names.
_PROBLEMS_SHOWN = 5


class InputFile(BaseModel):
    """A data file of one run and stream. Sorted by (exp, run, stream, file index, path): the
    order in which files are split into collector jobs and merged."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    exp: int
    run: int
    stream: str
    path: Path

    @property
    def exprun(self) -> ExpRun:
        return ExpRun(self.exp, self.run)

    def sort_key(self) -> tuple[int, int, str, int, str]:
        name = parse_data_file_name(self.path)
        index = name.index if name is not None else _NO_INDEX
        return (self.exp, self.run, self.stream, index, str(self.path))

    def __lt__(self, other: InputFile) -> bool:
        return self.sort_key() < other.sort_key()


class FileStamp(BaseModel):
    """What identifies a file's content cheaply: a change of any field means a changed file."""

    model_config = ConfigDict(frozen=True)

    path: str
    size: int
    mtime_ns: int
    inode: int

    @classmethod
    def of(cls, path: Path) -> FileStamp:
        """The stamp of ``path`` now (size -1 if the file is gone)."""
        try:
            info = os.stat(path)
        except FileNotFoundError:
            return cls(path=str(path), size=-1, mtime_ns=0, inode=0)
        return cls(path=str(path), size=info.st_size, mtime_ns=info.st_mtime_ns, inode=info.st_ino)


def changed_files(recorded: Iterable[FileStamp], current: Iterable[FileStamp]) -> list[str]:
    """Paths that are new, gone, or whose stamp differs, sorted."""
    before = {s.path: s for s in recorded}
    now = {s.path: s for s in current}
    return sorted(p for p in before.keys() | now.keys() if before.get(p) != now.get(p))


def read_file_list(path: Path) -> list[InputFile]:
    """The input files a user lists in a JSON file (``caf run --files-from``), checked.

    Two forms: ``{"stream": ["path", ...], ...}``, or ``["path", ...]``. Each file's run and
    stream come from the ``metadata`` inside it (the stream must match its key in the first
    form); relative paths are relative to the list's folder. A file that does not exist or
    whose metadata is missing or wrong is refused with its name.
    """
    try:
        doc: Any = json.loads(Path(path).read_text())
    except OSError as exc:
        raise B2CalError(f"--files-from {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise B2CalError(f"--files-from {path} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise B2CalError(f"--files-from {path} is not JSON: {exc}") from None
    entries: list[tuple[str | None, Any]]
    if isinstance(doc, dict):
        entries = [
            (str(stream), item)
            for stream, items in doc.items()
            for item in (items if isinstance(items, list) else [items])
        ]
    elif isinstance(doc, list):
        entries = [(None, item) for item in doc]
    else:
        raise B2CalError(f"--files-from {path}: expected {{stream: [paths]}} or [paths]")
    if not entries:
        raise B2CalError(f"--files-from {path} lists no file")
    files: list[InputFile] = []
    problems: list[str] = []
    seen: set[Path] = set()
    for stream, item in entries:
        if not isinstance(item, str) or not item:
            raise B2CalError(f"--files-from {path}: {item!r} is not a file path")
        file = (Path(path).parent / item).resolve()
        if file in seen:
            raise B2CalError(f"--files-from {path} lists {file} more than once")
        seen.add(file)
        listed = _listed_file(file, stream)
        if isinstance(listed, str):
            problems.append(f"{file}: {listed}")
        else:
            files.append(listed)
    if problems:
        shown = "; ".join(problems[:_PROBLEMS_SHOWN])
        more = len(problems) - _PROBLEMS_SHOWN
        raise B2CalError(
            f"--files-from {path}: {len(problems)} of {len(entries)} files cannot be used: "
            f"{shown}{f'; and {more} more' if more > 0 else ''}"
        )
    return sorted(files)


def _listed_file(file: Path, stream: str | None) -> InputFile | str:
    """The listed file, or why it cannot be used."""
    if not file.exists():
        return "does not exist"
    if not file.is_file():
        return "is not a file"
    try:
        metadata = read_metadata(file)
    except BadInputFile as exc:
        return exc.reason
    exp, run, found = metadata.get("experiment"), metadata.get("run"), metadata.get("stream")
    if not (isinstance(exp, int) and isinstance(run, int) and isinstance(found, str)):
        return "its metadata lacks experiment, run or stream"
    if stream is not None and found != stream:
        return f"listed under stream {stream} but its metadata says stream {found}"
    return InputFile(exp=exp, run=run, stream=found, path=file)
