"""Where a request's work lives: ``<site work root>/requests/<request id>/``.

Keyed by the request, never by a flow run, so a retried or rerun flow run finds the work that
is already done. Inside::

    files.json          the registered input files, fixed when the request is first planned
    inputdb/<tag>/      the request's input global tags, cut to its runs (basf2 local databases)
    output/             the engine's output folder: output/<Calibration>/outputdb/ and the rest
    validation/<Cal>/   validation report and plots of each calibration
"""

from __future__ import annotations

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

    @property
    def output(self) -> Path:
        return self.root / "output"

    @property
    def workspace(self) -> Workspace:
        return Workspace(self.output)

    def validation(self, calibration: str) -> Path:
        return self.root / "validation" / calibration
