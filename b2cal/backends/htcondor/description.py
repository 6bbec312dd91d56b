"""The submit description of one cluster of collector jobs, and its item data.

What the schedd receives is the description followed by ``QUEUE job_dir,job_arg,job_tag FROM
(...)``: one proc per job folder, in order. Jobs run in place on the shared filesystem, with an
environment b2cal spells out (never ``getenv``: the driver's environment holds database
passwords, and every user of the pool reads job ads), and each job carries its folder in the
``B2CalJobDir`` attribute, so that a job found in a queue can be told to be the folder's own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from b2cal.backends.base import Job
from b2cal.backends.htcondor.options import HTCondorOptions
from b2cal.errors import B2CalError
from b2cal.sites import JobResources

#: The job attribute that names a job's folder (``+B2CalJobDir`` in a submit file).
FOLDER_ATTRIBUTE = "B2CalJobDir"


def submit_description(
    target: str,
    python: str,
    resources: JobResources,
    event_log: Path,
    options: HTCondorOptions | None = None,
) -> dict[str, str]:
    """The submit description of one cluster of jobs calling ``target``; each proc gets its
    folder from :func:`item_data`."""
    chosen = options or HTCondorOptions()
    description = {
        "universe": "vanilla",
        "executable": python,
        # the new syntax: double quotes around all, single quotes around one argument, so a
        # folder with a space stays one argument
        "arguments": f"\"-m b2cal.backends.launch {target} '$(job_arg)'\"",
        "initialdir": "$(job_dir)",
        "output": "$(job_dir)/batch.out",
        "error": "$(job_dir)/batch.err",
        "log": str(event_log),
        "environment": environment(resources, chosen.environment),
        "should_transfer_files": "NO",
        "request_cpus": str(resources.cores),
        "request_disk": str(chosen.disk_mb * 1024),  # KiB, HTCondor's unit
        "batch_name": "b2cal",
        f"MY.{FOLDER_ATTRIBUTE}": '"$(job_tag)"',
    }
    if resources.memory_mb:
        description["request_memory"] = str(resources.memory_mb)
    if resources.wall_minutes:
        description[_submit_key(chosen.wall_time_attribute)] = str(resources.wall_minutes * 60)
    if resources.queue:
        description["accounting_group"] = resources.queue
    for key, value in chosen.submit.items():
        description[_submit_key(key)] = value
    return description


def environment(resources: JobResources, extra: Mapping[str, str]) -> str:
    """The job's environment in the new syntax (``"A=1 B='x y'"``): what a collector needs to
    run as it does locally, and the site's ``environment``."""
    variables = {
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": str(resources.cores),
        **extra,
    }
    words = [f"{name}='{_quoted(value)}'" for name, value in variables.items()]
    return '"' + " ".join(words) + '"'


def item_data(jobs: Sequence[Job]) -> list[dict[str, str]]:
    """One item per job, in order: its folder as a path (``job_dir``), as one argument of the
    new syntax (``job_arg``) and as a ClassAd string (``job_tag``)."""
    items = []
    for job in jobs:
        folder = str(job.directory)
        if "\n" in folder or "\x1f" in folder:
            raise B2CalError(f"collector job folder {folder!r} cannot be submitted to HTCondor")
        items.append(
            {
                "job_dir": folder,
                "job_arg": _quoted(folder),
                "job_tag": folder.replace("\\", "\\\\").replace('"', '\\"'),
            }
        )
    return items


def _quoted(value: str) -> str:
    """``value`` inside single quotes of the new syntax (quotes doubled)."""
    return value.replace("'", "''").replace('"', '""')


def _submit_key(key: str) -> str:
    """``+Attr`` (a submit file's way to set a job attribute) as the bindings spell it."""
    return f"MY.{key[1:]}" if key.startswith("+") else key
