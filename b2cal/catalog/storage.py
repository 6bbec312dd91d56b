"""Finding input files on a storage element laid out as :mod:`b2cal.catalog.naming` says.

Only names are read: the collector checks each file's contents when it reads it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from b2cal.catalog.inputs import InputFile
from b2cal.catalog.naming import exp_folder, parse_data_file_name, run_of_folder
from b2cal.errors import B2CalError


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
    wanted = sorted(set(streams))
    exp_dir = storage / exp_folder(exp)
    if not exp_dir.is_dir():
        return []
    found = []
    # List what is there rather than probe every run number: a wide range costs nothing.
    for run_dir in exp_dir.iterdir():
        run = run_of_folder(run_dir.name)
        if run is None or run not in runs:
            continue
        for stream in wanted:
            for path in (run_dir / stream).glob("*.root"):
                name = parse_data_file_name(path)
                if name is not None and (name.exp, name.run, name.stream) == (exp, run, stream):
                    found.append(InputFile(exp=exp, run=run, stream=stream, path=path))
    return sorted(found)
