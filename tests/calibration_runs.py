"""Requests whose calibration runs stand in a given state, made straight in a state database:
for tests of what acts on such runs (the API, the dashboard, uploads) without computing them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from b2cal.db.database import StateDatabase
from b2cal.db.states import CalRunState
from b2cal.sites import RequestKind

S = CalRunState
#: The moves of a calibration run from PLANNED to waiting for its sign-off.
TO_SIGNOFF = (S.COLLECTING, S.ALGORITHM, S.VALIDATING, S.AWAITING_SIGNOFF)
#: A validation summary that passed (what the dashboard's pages show).
PASSED = {
    "passed": True, "problems": [], "reference_tag": "running", "plots": [],
    "fields": [{"iov": "1,1,1,4", "field": "t0", "size": 64, "mean": 1.5, "min": 0.0,
                "max": 3.0, "change": 0.1, "max_abs_pull": 1.2}],
}  # fmt: skip


def started_request(
    db: StateDatabase,
    calibrations: Sequence[str] = ("ChannelT0",),
    *,
    through: Sequence[CalRunState] = (),
    summary: dict[str, Any] | None = None,
    site: str = "local",
    exp: int = 1,
    runs: tuple[int, int] = (1, 4),
    kind: RequestKind = RequestKind.PROMPT,
    input_tags: Sequence[str] = ("base",),
) -> dict[str, int]:
    """A started request, each of its calibration runs moved through ``through`` (the last
    move with ``summary``); calibration -> calibration-run id."""
    request = db.create_request(
        kind=kind, site=site, exp=exp, run_low=runs[0], run_high=runs[1],
        calibrations=tuple(calibrations), input_tags=list(input_tags), actor="test",
    )  # fmt: skip
    found = {}
    for calrun in db.start_request(request.id):
        for number, state in enumerate(through, 1):
            last = number == len(through)
            db.move(calrun.id, state, **({"summary": summary} if last and summary else {}))
        found[calrun.calibration] = calrun.id
    return found
