"""What discovery decides from the storage alone: which files exist, and which have settled.

Pure: it lists and reads files but keeps no state; :mod:`b2cal.db.discovery` records what was
seen and registers files once they have settled. A file that is still being written must never
be registered, so a file counts as settled only when

* its size and mtime have not changed for ``settle_seconds``, or
* its ROOT header says the file is complete: the header's ``fEND`` (the end of the file's
  last record, written when the writer closes the file) equals the file's size.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from b2cal.catalog.naming import DataFileName, parse_data_file_name

_ROOT_MAGIC = b"root"
#: From this header version on, ROOT writes fEND as 64 bits (files over 2 GB).
_LARGE_FILE_VERSION = 1_000_000


@dataclass(frozen=True)
class Observation:
    """A data file as one scan found it."""

    path: Path
    size: int
    mtime_ns: int
    name: DataFileName


def scan(root: Path) -> Iterator[Observation]:
    """Every data file below ``root`` (named as :mod:`b2cal.catalog.naming` says), by path.

    Files that vanish while the scan runs are left out; a missing root yields nothing (the
    caller says so).
    """
    for folder, subfolders, files in os.walk(root):
        subfolders.sort()
        for file in sorted(files):
            path = Path(folder) / file
            name = parse_data_file_name(path)
            if name is None:
                continue
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            yield Observation(path, stat.st_size, stat.st_mtime_ns, name)


def root_header_complete(path: Path, size: int) -> bool:
    """Whether the ROOT header of ``path`` says the file ends at ``size`` bytes (closed)."""
    try:
        with path.open("rb") as handle:
            header = handle.read(20)
    except OSError:
        return False
    if len(header) < 16 or header[:4] != _ROOT_MAGIC:
        return False
    version = struct.unpack(">i", header[4:8])[0]
    if version >= _LARGE_FILE_VERSION:
        if len(header) < 20:
            return False
        end = struct.unpack(">q", header[12:20])[0]
    else:
        end = struct.unpack(">i", header[12:16])[0]
    return bool(end == size)


def settled(
    unchanged_since: datetime, now: datetime, settle_seconds: float, header_complete: bool
) -> bool:
    """Whether a file unchanged since ``unchanged_since`` may be registered ``now``."""
    return header_complete or now - unchanged_since >= timedelta(seconds=settle_seconds)
