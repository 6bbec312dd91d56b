"""The state models of b2cal's state database: one for a calibration run, one for a request.

A *calibration run* is one calibration for one processing request. Its state says where it is in
the loop collect → algorithm → validate → sign-off → upload, and it is the one state every part
of b2cal shows and acts on: the CLI (``b2cal status``), the flows, later the dashboard. The
rules here are pure: :func:`check_move` says whether a state may follow another, and the state
database applies them inside the transaction that changes the row, so two callers racing to move
the same calibration run cannot both win.

How the states relate to Prefect and to the engine (docs/orchestration.md has the table):

* PLANNED, COLLECTING, ALGORITHM, VALIDATING are *active*: a ``calibrate`` flow run is Running.
  The active states may follow one another in any order: an iteration goes back from ALGORITHM
  to COLLECTING, and a retried flow run starts again at PLANNED and walks forward over work that
  is already done.
* AWAITING_SIGNOFF: the flow run ended Completed; nothing is held while an expert decides.
* APPROVED → UPLOADED: a short ``sign-off`` flow run uploads into the request's staging tag
  (an approved calibration whose dependency is not uploaded yet, or whose upload failed, stays
  APPROVED until a later sign-off run uploads it).
* NOT_ENOUGH_DATA and FAILED are the engine's results of the same names (the flow run ends
  Completed for the first, Failed for the second); CANCELLED follows a cancelled flow run.
* SKIPPED: the coordinator chose not to run it (before it started, or once it stopped without
  being uploaded); its dependants use the request's input tags, and those that had used its
  output are computed again.
* A *rerun* starts a finished calibration run again at PLANNED (its earlier payloads are first
  removed from the staging tag).
"""

from __future__ import annotations

from enum import StrEnum

from b2cal.errors import StateConflict


class CalRunState(StrEnum):
    """Where a calibration run is (values are what the database stores and users read)."""

    PLANNED = "PLANNED"
    COLLECTING = "COLLECTING"
    ALGORITHM = "ALGORITHM"
    VALIDATING = "VALIDATING"
    AWAITING_SIGNOFF = "AWAITING_SIGNOFF"
    APPROVED = "APPROVED"
    REJECTED = "REJECTED"
    UPLOADED = "UPLOADED"
    FAILED = "FAILED"
    NOT_ENOUGH_DATA = "NOT_ENOUGH_DATA"
    CANCELLED = "CANCELLED"
    SKIPPED = "SKIPPED"

    @property
    def active(self) -> bool:
        """A flow run is working on it."""
        return self in ACTIVE

    @property
    def done(self) -> bool:
        """Its part of the request is over and its dependants may use what it leaves."""
        return self in (CalRunState.UPLOADED, CalRunState.SKIPPED)

    @property
    def ended(self) -> bool:
        """Nothing more happens to it unless someone acts (sign-off, rerun, skip)."""
        return not self.active and self is not CalRunState.APPROVED


ACTIVE = frozenset(
    {CalRunState.PLANNED, CalRunState.COLLECTING, CalRunState.ALGORITHM, CalRunState.VALIDATING}
)
#: States that have ended: a rerun (or a skip) may follow.
_ENDED = frozenset(
    {
        CalRunState.REJECTED,
        CalRunState.UPLOADED,
        CalRunState.FAILED,
        CalRunState.NOT_ENOUGH_DATA,
        CalRunState.CANCELLED,
        CalRunState.SKIPPED,
    }
)
#: States a rerun may start from: everything no flow run works on (one waiting for its
#: sign-off or upload is rerun with a dependency that is rerun: its inputs change).
RERUNNABLE = _ENDED | {CalRunState.AWAITING_SIGNOFF, CalRunState.APPROVED}
_STOPPED = frozenset({CalRunState.FAILED, CalRunState.CANCELLED})

_MOVES: dict[CalRunState, frozenset[CalRunState]] = {
    **{
        state: ACTIVE
        | _STOPPED
        | {CalRunState.NOT_ENOUGH_DATA}
        | (
            {CalRunState.AWAITING_SIGNOFF, CalRunState.APPROVED}
            if state is CalRunState.VALIDATING
            else frozenset()
        )
        # Skipped before it started (the state database checks that no flow run has it).
        | ({CalRunState.SKIPPED} if state is CalRunState.PLANNED else frozenset())
        for state in ACTIVE
    },
    CalRunState.AWAITING_SIGNOFF: frozenset(
        {CalRunState.APPROVED, CalRunState.REJECTED, CalRunState.CANCELLED, CalRunState.SKIPPED}
    ),
    # An upload that fails leaves it APPROVED (the next sign-off run tries again).
    CalRunState.APPROVED: frozenset({CalRunState.UPLOADED, CalRunState.CANCELLED}),
    **{state: frozenset({CalRunState.PLANNED, CalRunState.SKIPPED}) for state in _ENDED},
}
# A skipped calibration is only ever brought back by a rerun; an uploaded one is not skipped
# (its payloads are in the staging tag: rerun it instead).
_MOVES[CalRunState.SKIPPED] = frozenset({CalRunState.PLANNED})
_MOVES[CalRunState.UPLOADED] = frozenset({CalRunState.PLANNED})
#: States a skip may start from (PLANNED only before any flow run has taken it).
SKIPPABLE = frozenset(s for s, moves in _MOVES.items() if CalRunState.SKIPPED in moves)


def allowed_moves(state: CalRunState) -> frozenset[CalRunState]:
    return _MOVES[state]


def check_move(what: str, current: CalRunState, new: CalRunState) -> None:
    """Raise StateConflict unless a calibration run in ``current`` may move to ``new``."""
    if new not in _MOVES[current]:
        raise StateConflict(what, current.value, new.value)


def check_attempt(what: str, current: str, wanted: str, attempt: int, shown: int | None) -> None:
    """Raise StateConflict if the caller acted on attempt ``shown`` of a calibration run that is
    now at ``attempt`` (a page from before a rerun); ``shown`` None: the caller did not say.
    The state database checks it under the row's lock, so a rerun in between is seen too."""
    if shown is not None and attempt != shown:
        note = f"it was shown at attempt {shown} and is now attempt {attempt}: look at it again"
        raise StateConflict(what, current, wanted, note)


class RequestState(StrEnum):
    """Where a processing request is, derived from its calibration runs."""

    PENDING = "PENDING"  # created, its process-request flow run has not started
    RUNNING = "RUNNING"  # some calibration run is active
    WAITING = "WAITING"  # nothing active; some calibration run awaits a sign-off, or its upload
    #                     (approved, its dependency not uploaded yet)
    DONE = "DONE"  # every calibration run UPLOADED or SKIPPED: the staging tag is TESTING
    FAILED = "FAILED"  # nothing active or waiting, and some calibration run did not end well
    CANCELLED = "CANCELLED"


def request_state(
    states: list[CalRunState], cancelled: bool = False, queued: int = 0
) -> RequestState:
    """A request's state from its calibration runs' states.

    ``queued`` counts the PLANNED runs that no flow run has taken: deferred calibrations that
    wait for a dependency's upload (or are about to be started). While nothing else runs and
    a person must act first (a sign-off, or a rerun or skip of a rejected dependency), the
    request is WAITING, not RUNNING.
    """
    if cancelled:
        return RequestState.CANCELLED
    if not states:
        return RequestState.PENDING
    people = (CalRunState.AWAITING_SIGNOFF, CalRunState.APPROVED)
    if sum(1 for s in states if s.active) > queued:
        return RequestState.RUNNING
    if queued:
        blocked = any(s in people or s is CalRunState.REJECTED for s in states)
        return RequestState.WAITING if blocked else RequestState.RUNNING
    if any(s in people for s in states):
        return RequestState.WAITING
    if all(s.done for s in states):
        return RequestState.DONE
    return RequestState.FAILED


class BucketState(StrEnum):
    """A bucket: OPEN takes new runs; CLOSED waits for its prompt request (discovery starts
    one, also again when a request of it could not be started); then PROCESSING/PROCESSED.
    HELD: its request was cancelled on purpose, so it gets a new one only from a person
    (``b2cal request create --bucket N``)."""

    OPEN = "OPEN"
    CLOSED = "CLOSED"
    PROCESSING = "PROCESSING"
    PROCESSED = "PROCESSED"
    HELD = "HELD"


class FileStatus(StrEnum):
    """A file seen by discovery: SEEN until it has settled, then REGISTERED (or BAD)."""

    SEEN = "SEEN"
    REGISTERED = "REGISTERED"
    BAD = "BAD"


class SignoffDecision(StrEnum):
    APPROVE = "approve"
    REJECT = "reject"
