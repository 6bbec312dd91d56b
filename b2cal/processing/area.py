"""Where a request's work lives: ``<site work root>/requests/<request id>/``.

Keyed by the request, never by a flow run, so a retried or rerun flow run finds the work that
is already done. Inside::

    files.json          the registered input files, fixed when the request is first planned
    inputdb/<tag>/      the request's input global tags, cut to its runs (basf2 local databases)
    upstream/<Cal>/     payloads of a dependency computed at another site, from the staging tag
    attempts.json       the attempt of each calibration as last planned here (a rerun is newer)
    output/             the engine's output folder: output/<Calibration>/outputdb/ and the rest
    validation/<Cal>/   validation report and plots of each calibration
    processes/<flow run id>.json  where the process of a top-level flow run runs (host, pid,
                        start time), so that the site's reconciler sees it die

Each site that computes calibrations of a request has its own workspace, under its own work
root; they share nothing but the state database and the conditions database.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from b2cal.caf.workspace import Workspace


@dataclass(frozen=True)
class RequestArea:
    root: Path

    @property
    def files_list(self) -> Path:
        return self.root / "files.json"

    @property
    def inputdb(self) -> Path:
        return self.root / "inputdb"

    def input_tag(self, tag: str) -> Path:
        return self.inputdb / tag

    def upstream(self, calibration: str) -> Path:
        return self.root / "upstream" / calibration

    @property
    def attempts(self) -> Path:
        return self.root / "attempts.json"

    def process_record(self, flow_run_id: str) -> Path:
        return self.root / "processes" / f"{flow_run_id}.json"

    @contextmanager
    def turn(self, what: str) -> Iterator[None]:
        """One holder at a time of ``what`` ("plan", "upload") for this request at this site,
        across threads, processes and nodes (a lock file in the workspace, on the shared
        filesystem): the others wait, then find the work done."""
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / f"{what}.lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @property
    def output(self) -> Path:
        return self.root / "output"

    @property
    def workspace(self) -> Workspace:
        return Workspace(self.output)

    def validation(self, calibration: str) -> Path:
        return self.root / "validation" / calibration
