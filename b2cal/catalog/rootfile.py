"""Reading data files, with every check done before any event is used.

A file is usable when it opens as ROOT, is as long as its header says (a truncated copy fails
here), holds a ``metadata`` JSON object matching the experiment, run and stream it is listed
under, and an ``events`` tree with every branch a collector needs and as many entries as the
metadata says. Anything else raises :class:`~b2cal.errors.BadInputFile` with the reason, so a
collector job can leave the file out and say why.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from b2cal.catalog.naming import EVENTS_TREE, METADATA
from b2cal.errors import BadInputFile

if TYPE_CHECKING:
    from b2cal.catalog.inputs import InputFile

#: Chunk size for reading a file: bounds a job's memory whatever the file size.
STEP_SIZE = "64 MB"


def one_line(exc: BaseException) -> str:
    """An exception as one short line (for reasons recorded in job status files)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _open(path: Path) -> Any:
    import uproot  # imported here: loading uproot costs ~0.5 s, only job processes need it

    try:
        return uproot.open(path)
    except Exception as exc:
        raise BadInputFile(path, f"cannot open as ROOT: {one_line(exc)}") from exc


def _metadata(source: Any, path: Path) -> dict[str, Any]:
    try:
        metadata = json.loads(str(source[METADATA]))
    except Exception as exc:
        raise BadInputFile(path, f"no readable metadata JSON: {one_line(exc)}") from exc
    if not isinstance(metadata, dict):
        raise BadInputFile(path, "metadata is not a JSON object")
    return metadata


def read_metadata(path: Path) -> dict[str, Any]:
    """The ``metadata`` JSON object of a data file (BadInputFile if there is none)."""
    with _open(path) as source:
        return _metadata(source, path)


def read_chunks(file: InputFile, branches: Sequence[str]) -> Iterator[Any]:
    """Yield the events of ``file`` in chunks of ``branches``; BadInputFile if unusable."""
    path = file.path
    with _open(path) as source:
        size = path.stat().st_size
        if source.file.fEND > size:
            raise BadInputFile(path, f"truncated: {size} bytes, its header says {source.file.fEND}")
        tree = _checked_tree(source, file, branches)
        iterator = tree.iterate(list(branches), step_size=STEP_SIZE, library="ak")
        while True:
            try:
                chunk = next(iterator)
            except StopIteration:
                return
            except Exception as exc:
                raise BadInputFile(path, f"cannot read events: {one_line(exc)}") from exc
            yield chunk


def _checked_tree(source: Any, file: InputFile, branches: Sequence[str]) -> Any:
    path = file.path
    metadata = _metadata(source, path)
    claimed = (metadata.get("experiment"), metadata.get("run"), metadata.get("stream"))
    if claimed != (file.exp, file.run, file.stream):
        raise BadInputFile(
            path,
            f"metadata says experiment {claimed[0]} run {claimed[1]} stream {claimed[2]}, "
            f"its path says experiment {file.exp} run {file.run} stream {file.stream}",
        )
    try:
        tree = source[EVENTS_TREE]
        present = set(tree.keys())
    except Exception as exc:
        raise BadInputFile(path, f"no readable '{EVENTS_TREE}' tree: {one_line(exc)}") from exc
    missing = [b for b in branches if b not in present]
    if missing:
        raise BadInputFile(path, f"missing branches: {', '.join(missing)}")
    expected = metadata.get("nevents")
    if isinstance(expected, int) and tree.num_entries != expected:
        raise BadInputFile(path, f"metadata says {expected} events, tree has {tree.num_entries}")
    return tree
