"""Crash-safe file writes, canonical JSON and checksums: what every record b2cal keeps relies on.

A reader sees the old file or the whole new one, never a part: resuming after a kill depends on
this, since "the record exists" then reliably means "the step is done". JSON is written
canonically (sorted keys, fixed indentation), so the same content always gives the same bytes
and the same checksum.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def _written_beside(path: Path, data: bytes) -> str:
    """A complete, synced temporary file holding ``data`` in ``path``'s folder: its name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename."""
    path = Path(path)
    tmp = _written_beside(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_scratch(path: Path, data: bytes) -> None:
    """Write a file that only the processes of this computation read, and that is written
    afresh if the computation runs again (an algorithm execution's inputs and outputs): no
    temporary file, no sync, which cost milliseconds per file and durability nobody needs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def create_exclusive(path: Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` only if no file is there yet, atomically; whether it did.

    Of two processes creating the same file at once, exactly one succeeds (a hard link of a
    complete temporary file; a reader never sees a part).
    """
    path = Path(path)
    tmp = _written_beside(path, data)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        Path(tmp).unlink(missing_ok=True)
    return True


def canonical_json(doc: Any) -> bytes:
    """``doc`` as canonical JSON bytes: sorted keys, one-space indent, newline at the end."""
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


def atomic_write_json(path: Path, doc: Any) -> None:
    """Write ``doc`` as canonical JSON, atomically."""
    atomic_write_bytes(path, canonical_json(doc))


def md5sum(data: bytes) -> str:
    """The md5 of ``data``: the checksum of a payload file (as the conditions database keeps)."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def sha256sum(data: bytes) -> str:
    """The sha256 of ``data``: digests of inputs and plans, where collisions must not happen."""
    return hashlib.sha256(data).hexdigest()
