"""``calibration-request``: a processing request made and run from Prefect alone.

Its parameters are the request (the Prefect UI's Run form shows them with their
descriptions; ``prefect deployment run calibration-request/<site> -p exp=1 -p runs=1-8``
from a shell). Prefect refuses a value of the wrong type before a run exists; what only b2cal
can check (a calibration it does not know, runs without registered data, a tag that does not
exist, another site's name) ends the run at its start with one line in its log and its state
message, and makes no request. Then the run is the request's flow run, as one started by
``b2cal request create``: processed by the same body as ``process-request`` (which names and
tags it after the request), healed the same way: b2cal's healing runs a crashed run again
under the same id, and that run finds the request it made (``state_request_flow_run``)
instead of making another. (A run that crashes before its request exists is left Crashed:
there is nothing to heal; start it again.)
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from prefect import flow, get_run_logger
from prefect.client.schemas.objects import State
from prefect.runtime import flow_run
from pydantic import Field

from b2cal.core.iov import parse_runs
from b2cal.db.model import Request
from b2cal.errors import B2CalError
from b2cal.requests.operations import draft_request, new_request
from b2cal.sites import RequestKind, Site
from flows.common import NOT_INPUT, pool_site, records, refused
from flows.process_request import cancelled, process

#: A run range as people write it: "1-8", or "5".
RUNS = r"^\s*\d+\s*(-\s*\d+\s*)?$"


@flow(
    name="calibration-request",
    flow_run_name="new request · e{exp} r{runs}",
    on_cancellation=[cancelled],
)
def calibration_request(
    exp: Annotated[int, Field(ge=0)],
    runs: Annotated[str, Field(pattern=RUNS)],
    calibrations: list[str] | None = None,
    kind: Literal["prompt", "recalibration", "mc"] = "recalibration",
    input_tags: list[str] | None = None,
    reference_tag: str | None = None,
    config: dict[str, dict[str, Any]] | None = None,
    placement: dict[str, str] | None = None,
    open_ended: bool = False,
    dry_run: bool = False,
    site: str | None = None,
) -> str | State[Any]:
    """Make a processing request at this pool's site and run it; returns its final state.

    Args:
        exp: Experiment number.
        runs: Run range A-B (inclusive), or one run A.
        calibrations: Calibrations to run, those they depend on added (default: the site's
            prompt calibrations).
        kind: prompt, recalibration or mc (prompt requests leave the last IoV open).
        input_tags: Global tags looked up after the calibrations' own payloads (default:
            the site's running tag, if it exists).
        reference_tag: Tag that validation compares against (default: the running tag).
        config: Expert settings per calibration, as in `b2cal caf run --config`, e.g.
            {"ChannelT0": {"max_iterations": 3}}.
        placement: Calibrations to run at another site: {"BeamSpot": "bnl"}.
        open_ended: Leave the last IoV of each payload open (always for prompt).
        dry_run: Check the request and log its plan; make nothing.
        site: The site of this deployment's pool (set by the deployment).
    """
    me = str(flow_run.id or "")
    try:
        here = pool_site(site)
        with records(here) as (db, _):
            made = db.request_of_flow_run(me) if me else None
            if made is None:
                asked = _asked(here, exp, runs, calibrations, kind, open_ended)
                if dry_run:
                    draft = draft_request(
                        here, asked["kind"], exp, asked["runs"], asked["calibrations"],
                        input_tags, config or {}, asked["open_ended"], reference_tag, placement,
                    )  # fmt: skip
                    return _dry_run(draft)
                made = new_request(
                    db, here, **asked, input_tags=input_tags, reference_tag=reference_tag,
                    config=config or {}, actor=f"prefect (flow run {me})", placement=placement,
                    flow_run_id=me,
                )  # fmt: skip
                get_run_logger().info("made %s, staging tag %s", made.label, made.staging_tag)
            else:
                get_run_logger().info("run again: %s, made by this flow run", made.label)
    except NOT_INPUT:
        raise
    except B2CalError as exc:
        return refused(str(exc))
    return process(here, made.id)


def _asked(
    site: Site,
    exp: int,
    runs: str,
    calibrations: list[str] | None,
    kind: str,
    open_ended: bool,
) -> dict[str, Any]:
    """The request's parameters as b2cal takes them (the site's defaults filled in)."""
    request_kind = RequestKind(kind)
    return {
        "kind": request_kind,
        "exp": exp,
        "runs": parse_runs(runs),
        "calibrations": calibrations or site.prompt_calibrations,
        "open_ended": open_ended or request_kind is RequestKind.PROMPT,
    }


def _dry_run(draft: Request) -> str:
    log = get_run_logger()
    log.info(
        "dry run: a %s request at site %s of e%d r%d-%d would calibrate %s (input tags: %s; "
        "elsewhere: %s); nothing was made",
        draft.kind.value,
        draft.site,
        draft.exp,
        draft.run_low,
        draft.run_high,
        ", ".join(draft.calibrations),
        ", ".join(draft.input_tags) or "none",
        ", ".join(f"{c} at {s}" for c, s in draft.placement.items()) or "nothing",
    )
    return "dry run"
