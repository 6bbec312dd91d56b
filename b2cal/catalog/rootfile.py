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

#: Uncompressed bytes of the needed branches read at once: bounds a job's memory whatever the
#: file size. A file whose branches hold less is read in one go (the common case); larger
#: chunks cost more than they save (the kernel zeroes every fresh large array).
STEP_BYTES = 16_000_000


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


def read_whole(file: InputFile) -> int:
    """Read every branch of every event of ``file``: how a file is tried alone, to tell a fault
    of its own from a collector's. Returns its events; BadInputFile if any of it is unusable."""
    with _open(file.path) as source:
        try:
            branches = list(source[EVENTS_TREE].keys())
        except Exception as exc:
            raise BadInputFile(
                file.path, f"no readable '{EVENTS_TREE}' tree: {one_line(exc)}"
            ) from exc
    return sum(len(chunk) for chunk in read_chunks(file, branches))


def read_chunks(file: InputFile, branches: Sequence[str]) -> Iterator[Any]:
    """Yield the events of ``file`` in chunks of ``branches``; BadInputFile if unusable."""
    path = file.path
    with _open(path) as source:
        size = path.stat().st_size
        if source.file.fEND > size:
            raise BadInputFile(path, f"truncated: {size} bytes, its header says {source.file.fEND}")
        tree = _checked_tree(source, file, branches)
        names = list(branches)
        try:
            step = _entries_per_step(tree, names)
            small = step >= tree.num_entries  # the common case: the file in one read
            whole = tree.arrays(names, library="ak", array_cache=None) if small else None
        except Exception as exc:
            raise BadInputFile(path, f"cannot read events: {one_line(exc)}") from exc
        if whole is not None:
            yield whole
            return
        iterator = tree.iterate(names, step_size=step, library="ak")
        while True:
            try:
                chunk = next(iterator)
            except StopIteration:
                return
            except Exception as exc:
                raise BadInputFile(path, f"cannot read events: {one_line(exc)}") from exc
            yield chunk


def _entries_per_step(tree: Any, branches: list[str]) -> int:
    """Entries per chunk so that a chunk of ``branches`` holds about ``STEP_BYTES`` bytes.

    From the branches' uncompressed sizes in the tree's header (``fTotBytes``), read already;
    uproot's own conversion of a step in bytes walks every basket of every branch, which
    costs as much as reading a small file's events.
    """
    total = sum(int(tree[name].member("fTotBytes")) for name in branches)
    entries = int(tree.num_entries)
    if total <= STEP_BYTES:
        return max(entries, 1)
    return max(1, entries * STEP_BYTES // total)


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
        missing = [b for b in branches if b not in tree]
    except Exception as exc:
        raise BadInputFile(path, f"no readable '{EVENTS_TREE}' tree: {one_line(exc)}") from exc
    if missing:
        raise BadInputFile(path, f"missing branches: {', '.join(missing)}")
    expected = metadata.get("nevents")
    if isinstance(expected, int) and tree.num_entries != expected:
        raise BadInputFile(path, f"metadata says {expected} events, tree has {tree.num_entries}")
    return tree
