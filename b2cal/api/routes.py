"""The resources of b2cal's HTTPS API: what each URL reads or does, as functions of the person
asking and the JSON they sent (the server in :mod:`b2cal.api.server` does TLS and HTTP).

Each URL names the kind of action it is (:class:`Route`): the server checks that the person may
do that kind of action at all before a body is parsed or anything is read; the handler then
checks the precise target (an expert of *this* calibration) through
:mod:`b2cal.gateway.actions` (the policy, the action log, one of two racing people wins).
Bodies are checked by pydantic models, so a form with invalid values is refused with what is
wrong before anything happens. Documented in docs/api.md.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from b2cal.auth.policy import Action
from b2cal.db.database import StateDatabase
from b2cal.db.model import CalibrationRun, Request
from b2cal.db.states import SignoffDecision
from b2cal.errors import MethodNotAllowed, UnknownRecord
from b2cal.gateway import actions
from b2cal.gateway.actions import Person
from b2cal.sites import RequestKind, Site

API = "/api/v1"
#: How long the status document is served from memory (a page of scripts polling at once
#: costs one query set per interval, not one per caller).
STATUS_SECONDS = 2.0


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SignoffBody(_Body):
    decision: SignoffDecision
    comment: str = ""
    #: The attempt the decider looked at; a newer one is refused.
    attempt: int | None = Field(default=None, ge=1)
    upload: Literal["flow", "no"] = "flow"


class RetryBody(_Body):
    attempt: int | None = Field(default=None, ge=1)


class SkipBody(_Body):
    comment: str = Field(min_length=1)
    attempt: int | None = Field(default=None, ge=1)


class ResubmitBody(_Body):
    jobs: list[int] | None = None
    attempt: int | None = Field(default=None, ge=1)


class RequestBody(_Body):
    exp: int = Field(ge=0)
    runs: tuple[int, int]
    calibrations: list[str] = Field(min_length=1)
    kind: RequestKind = RequestKind.RECALIBRATION
    input_tags: list[str] | None = None
    reference_tag: str | None = None
    config: dict[str, dict[str, Any]] = Field(default_factory=dict)
    open_ended: bool = False
    place: dict[str, str] = Field(default_factory=dict)
    #: Only check and show the plan: create nothing.
    dry_run: bool = False


class PromoteBody(_Body):
    staging: str
    start: tuple[int, int]


def calrun_doc(c: CalibrationRun) -> dict[str, Any]:
    return {
        "id": c.id,
        "request": c.request_id,
        "calibration": c.calibration,
        "state": c.state.value,
        "attempt": c.attempt,
        "iteration": c.iteration,
        "message": c.message,
    }


def request_doc(r: Request, runs: list[CalibrationRun] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": r.id,
        "kind": r.kind.value,
        "site": r.site,
        "exp": r.exp,
        "runs": [r.run_low, r.run_high],
        "bucket": r.bucket_id,
        "calibrations": r.calibrations,
        "input_tags": r.input_tags,
        "staging_tag": r.staging_tag,
        "state": r.state.value,
        "created_by": r.created_by,
        "message": r.message,
        "placement": r.placement,
    }
    if runs is not None:
        doc["calibration_runs"] = [calrun_doc(c) for c in runs]
    return doc


@dataclass
class Api:
    """What the API serves from: one site, its state database, its conditions database."""

    site: Site
    db: StateDatabase
    _status: tuple[float, dict[str, Any]] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def status(self) -> dict[str, Any]:
        """The site's latest requests and their calibration runs (cached briefly)."""
        with self._lock:
            if self._status is not None and time.monotonic() - self._status[0] < STATUS_SECONDS:
                return self._status[1]
        requests = self.db.requests(limit=20)
        runs = self.db.calibration_runs_of([r.id for r in requests])
        doc = {
            "site": self.site.name,
            "requests": [request_doc(r, runs.get(r.id, [])) for r in requests],
            "awaiting_signoff": [
                c.id for rs in runs.values() for c in rs if c.state.value == "AWAITING_SIGNOFF"
            ],
        }
        with self._lock:
            self._status = (time.monotonic(), doc)
        return doc

    def forget_status(self) -> None:
        with self._lock:
            self._status = None


Handler = Callable[[Api, Person, dict[str, str], dict[str, Any]], dict[str, Any]]


def _whoami(api: Api, who: Person, _: dict[str, str], __: dict[str, Any]) -> dict[str, Any]:
    return who.doc()


def _status(api: Api, who: Person, _: dict[str, str], __: dict[str, Any]) -> dict[str, Any]:
    return api.status()


def _calrun(api: Api, who: Person, ids: dict[str, str], _: dict[str, Any]) -> dict[str, Any]:
    calrun = api.db.calibration_run(int(ids["id"]))
    doc = calrun_doc(calrun)
    doc["signoffs"] = [
        {"decision": s.decision.value, "actor": s.actor, "attempt": s.attempt, "at": str(s.at)}
        for s in api.db.signoffs(calrun.id)
    ]
    return doc


def _request(api: Api, who: Person, ids: dict[str, str], _: dict[str, Any]) -> dict[str, Any]:
    request = api.db.request(int(ids["id"]))
    return request_doc(request, api.db.calibration_runs(request.id))


def _signoff(api: Api, who: Person, ids: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
    asked = SignoffBody.model_validate(body)
    signed, followup = actions.sign_off(
        api.db, who, int(ids["id"]), asked.decision, asked.comment,
        attempt=asked.attempt, upload=asked.upload,
    )  # fmt: skip
    api.forget_status()
    return {"calibration_run": signed.calibration_run_id, "decision": signed.decision.value,
            "actor": signed.actor, "attempt": signed.attempt, "next": followup}  # fmt: skip


def _retry(api: Api, who: Person, ids: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
    asked = RetryBody.model_validate(body)
    again, flow_run = actions.retry(api.db, who, int(ids["id"]), attempt=asked.attempt)
    api.forget_status()
    return {"calibration_runs": [calrun_doc(c) for c in again], "flow_run": flow_run}


def _skip(api: Api, who: Person, ids: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
    asked = SkipBody.model_validate(body)
    changed, flow_run = actions.skip(
        api.db, who, int(ids["id"]), asked.comment, attempt=asked.attempt
    )
    api.forget_status()
    return {"calibration_runs": [calrun_doc(c) for c in changed], "flow_run": flow_run}


def _resubmit(api: Api, who: Person, ids: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
    asked = ResubmitBody.model_validate(body)
    chosen = actions.resubmit(api.db, who, int(ids["id"]), asked.jobs, attempt=asked.attempt)
    return {"calibration_run": int(ids["id"]), "jobs": chosen}


def _cancel(api: Api, who: Person, ids: dict[str, str], _: dict[str, Any]) -> dict[str, Any]:
    cancelled = actions.cancel(api.db, who, int(ids["id"]))
    api.forget_status()
    return {"request": int(ids["id"]), "calibration_runs": [calrun_doc(c) for c in cancelled]}


def _create(api: Api, who: Person, _: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
    from b2cal.requests.operations import draft_request

    asked = RequestBody.model_validate(body)
    # The calibrations asked for, before anything is read to draft them (site files, tags);
    # those they depend on are checked once the draft names them.
    actions.permit(
        api.db, who, Action.SUBMIT_REQUEST, f"a {asked.kind.value} request", asked.calibrations
    )
    draft = draft_request(
        api.site, asked.kind, asked.exp, asked.runs, asked.calibrations, asked.input_tags,
        asked.config, asked.open_ended or asked.kind is RequestKind.PROMPT, asked.reference_tag,
        asked.place,
    )  # fmt: skip
    if asked.dry_run:
        actions.permit(api.db, who, Action.SUBMIT_REQUEST, "a draft", draft.calibrations)
        return {"dry_run": True, "request": request_doc(draft)}
    made, flow_run = actions.submit_request(api.db, who, api.site, draft)
    api.forget_status()
    return {"request": request_doc(made), "flow_run": flow_run}


def _promote(api: Api, who: Person, ids: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
    from b2cal.cdb.connect import open_store
    from b2cal.core.iov import ExpRun

    asked = PromoteBody.model_validate(body)
    with open_store(api.site.cdb_database_url) as store:
        start = ExpRun(*asked.start)
        change = actions.promote(api.db, who, store, asked.staging, ids["tag"], start)
    return {
        "tag": ids["tag"],
        "staging": asked.staging,
        "added": [f"{p.name} {iov}" for p, iov in change.add],
        "closed": [f"{old.payload.name} {iov}" for old, iov in change.close],
    }


#: (method, path pattern, the kind of action, its target, handler); ``{id}`` matches a number,
#: ``{tag}`` a tag name; no action: anyone authenticated.
ROUTES: list[tuple[str, str, Action | None, str, Handler]] = [
    ("GET", "/whoami", None, "", _whoami),
    ("GET", "/status", Action.VIEW, "the site's status", _status),
    ("GET", "/requests/{id}", Action.VIEW, "request {id}", _request),
    ("POST", "/requests", Action.SUBMIT_REQUEST, "a request", _create),
    ("POST", "/requests/{id}/cancel", Action.CANCEL, "request {id}", _cancel),
    ("GET", "/calibration-runs/{id}", Action.VIEW, "calibration run {id}", _calrun),
    ("POST", "/calibration-runs/{id}/signoff", Action.SIGNOFF, "calibration run {id}", _signoff),
    ("POST", "/calibration-runs/{id}/retry", Action.RETRY, "calibration run {id}", _retry),
    ("POST", "/calibration-runs/{id}/skip", Action.SKIP, "calibration run {id}", _skip),
    ("POST", "/calibration-runs/{id}/resubmit", Action.RESUBMIT, "calibration run {id}", _resubmit),
    ("POST", "/tags/{tag}/promote", Action.PROMOTE, "tag {tag}", _promote),
]

_PARTS = {"id": r"(?P<id>\d{1,18})", "tag": r"(?P<tag>[A-Za-z0-9_.+-]{1,80})"}
_COMPILED = [
    (method, re.compile(API + re.sub(r"\{(\w+)\}", lambda m: _PARTS[m[1]], path) + "$"), action,
     target, handler)
    for method, path, action, target, handler in ROUTES
]  # fmt: skip


@dataclass(frozen=True)
class Route:
    """What a request asks for: its handler, the ids in its path, and the kind of action it
    is with its target (for the permission check that comes before anything is read)."""

    handler: Handler
    ids: dict[str, str]
    action: Action | None
    target: str


def route(method: str, path: str) -> Route:
    """The route of a request; UnknownRecord for an unknown URL, and one that exists for
    another method says which."""
    methods = []
    for allowed, pattern, action, target, handler in _COMPILED:
        matched = pattern.match(path)
        if matched:
            if allowed == method:
                ids = matched.groupdict()
                return Route(handler, ids, action, target.format(**ids))
            methods.append(allowed)
    if methods:
        raise MethodNotAllowed(path, methods)
    raise UnknownRecord("URL", path)
