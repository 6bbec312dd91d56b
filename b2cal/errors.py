"""Every exception b2cal raises for a problem a user can fix, in one place.

Anything raised as :class:`B2CalError` reaches the user as a one-line message (no traceback)
from the command line; everything else is a bug and is logged in full. Errors that callers act
on carry what they are about as fields (``BadInputFile.path``, ``CollectionFailed.job``,
``NopayloaddbError.status``), so no caller ever has to match on message text.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


class B2CalError(Exception):
    """A problem with the user's input or environment, explained in one line."""


# --- input data and configuration ---------------------------------------------------------------
class BadInputFile(B2CalError):
    """An input data file that cannot be used (corrupt, truncated, wrong metadata, no branches)."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"bad input file {self.path}: {reason}")


class CollectorFailed(B2CalError):
    """The collector raised while it read an input file (not a file it could not read: a
    crash). The job fails, naming the file; if it keeps failing, the file is marked bad."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"the collector failed on {self.path}: {reason}")


class ConfigError(B2CalError):
    """A configuration file (``caf run --config``) that cannot be applied as written."""

    def __init__(self, file: Path | str, reason: str, key: str = "") -> None:
        self.file = str(file)
        self.key = key
        self.reason = reason
        where = f" [{key}]" if key else ""
        super().__init__(f"config {self.file}{where}: {reason}")


# --- the engine's workspace and steps -----------------------------------------------------------
class WorkspaceError(B2CalError):
    """An output folder of ``caf run`` that cannot be used for what was asked."""

    def __init__(self, output: Path | str, reason: str) -> None:
        self.output = str(output)
        self.reason = reason
        super().__init__(f"output {self.output} {reason}")


class ArgumentsChanged(WorkspaceError):
    """The output was made with other arguments: ``differences`` maps name -> (then, now)."""

    def __init__(
        self,
        output: Path | str,
        differences: dict[str, tuple[Any, Any]],
        rerun_hint: bool = False,
    ) -> None:
        self.differences = differences
        detail = "; ".join(
            f"{k}: {then!r} then, {now!r} now" for k, (then, now) in differences.items()
        )
        hint = ", or --rerun CAL to recompute a calibration as it is now" if rerun_hint else ""
        super().__init__(
            output,
            f"was made with other arguments ({detail}); use another --output, or the same "
            f"arguments to resume{hint}",
        )


class InputsChanged(WorkspaceError):
    """Input files of a calibration changed since its output was started."""

    #: How many changed files a message names before it only counts the rest.
    SHOWN = 5

    def __init__(
        self,
        output: Path | str,
        calibration: str,
        changed: Sequence[str],
        replaced: bool = False,
        accept: str = "",
    ) -> None:
        self.calibration = calibration
        self.changed = list(changed)
        #: Only files replaced in place (the same paths): a rerun accepts them.
        self.replaced = replaced
        named = ", ".join(self.changed[: self.SHOWN])
        more = len(self.changed) - self.SHOWN
        if more > 0:
            named += f" and {more} more"
        if replaced:
            accept = accept or f"caf run --rerun {calibration}"
            advice = (
                f"{accept} accepts the replaced files, collecting only their jobs again; a "
                "plain resume keeps refusing them"
            )
            what = "replaced since (another size, time or inode)"
        else:
            advice = "use a new --output to calibrate the files as they are now"
            what = "changed since (new, gone, or another size, time or inode)"
        super().__init__(
            output, f"was started on other input files of {calibration}: {named} {what}; {advice}"
        )


class CalibrationBusy(WorkspaceError):
    """Another process holds the calibration (a driver of the same calibration is running)."""

    def __init__(self, output: Path | str, calibration: str) -> None:
        self.calibration = calibration
        super().__init__(
            output,
            f"is in use: {calibration} is being run by another b2cal process; wait for it to end",
        )


class CollectionFailed(B2CalError):
    """Collector jobs of a calibration failed even after their retries."""

    def __init__(
        self,
        calibration: str,
        job: int,
        attempts: int,
        failed: int,
        total: int,
        reason: str,
        log: Path | str,
    ) -> None:
        self.calibration = calibration
        self.job = job
        self.attempts = attempts
        self.failed = failed
        self.total = total
        self.reason = reason
        self.log = str(log)
        super().__init__(
            f"collector job {job} failed after {attempts} attempts ({failed} of {total} jobs "
            f"failed): {reason}; log: {self.log}"
        )


class Interrupted(B2CalError):
    """A step stopped because the run was interrupted (Ctrl-C, SIGTERM); a rerun resumes."""

    def __init__(self, what: str) -> None:
        self.what = what
        super().__init__(f"interrupted {what}; rerun to resume")


# --- SQL databases --------------------------------------------------------------------------------
class DatabaseError(B2CalError):
    """What a database driver or the schema migrations said, in one line, naming the database."""

    def __init__(self, label: str, url: str, reason: str) -> None:
        self.label = label
        self.url = url
        self.reason = reason
        super().__init__(f"{label} {url}: {reason}")


# --- the conditions database ------------------------------------------------------------------
class CdbError(B2CalError):
    """A conditions-database request that cannot be done; the database is left untouched."""


class UnknownTag(CdbError):
    def __init__(self, tag: str, note: str = "") -> None:
        self.tag = tag
        super().__init__(f"unknown global tag {tag!r}{f' ({note})' if note else ''}")


class TagExists(CdbError):
    def __init__(self, tag: str) -> None:
        self.tag = tag
        super().__init__(f"global tag {tag!r} exists already")


class UnknownPayload(CdbError):
    def __init__(self, name: str, revision: int | None = None, note: str = "") -> None:
        self.name = name
        self.revision = revision
        which = f" revision {revision}" if revision is not None else ""
        super().__init__(f"unknown payload {name!r}{which}{f': {note}' if note else ''}")


class NoPayloadValid(CdbError):
    """No payload of that name is valid at that run in any tag of the chain."""

    def __init__(self, tags: Sequence[str], name: str, exp: int, run: int) -> None:
        self.tags = list(tags)
        self.name = name
        self.exp, self.run = exp, run
        super().__init__(
            f"no payload {name} valid at experiment {exp} run {run} in "
            f"global tag{'s' if len(self.tags) > 1 else ''} {', '.join(self.tags)}"
        )


class ForbiddenChange(CdbError):
    """The tag's state or the IoV rules forbid the write."""


class ChecksumMismatch(CdbError):
    """Payload data whose md5 is not the one it must have."""


class NopayloaddbError(CdbError):
    """A request a nopayloaddb server refused or could not answer, in one line.

    ``status`` is the HTTP status if the server answered; ``detail`` what it said, if JSON.
    """

    def __init__(self, message: str, status: int | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


class MalformedPayload(B2CalError):
    """A payload that lacks a field or holds values that cannot be used."""


# --- b2cal's state database and the orchestration ---------------------------------------------
class StateError(B2CalError):
    """A request, calibration run, bucket or site that cannot be used for what was asked."""


class UnknownRecord(StateError):
    """No request, calibration run, bucket or site of that name or number."""

    def __init__(self, kind: str, key: object, note: str = "") -> None:
        self.kind = kind
        self.key = key
        super().__init__(f"no {kind} {key}{f' ({note})' if note else ''}")


class StateConflict(StateError):
    """The item has moved on: what was asked needs another state (someone else acted first?)."""

    def __init__(self, what: str, current: str, wanted: str, note: str = "") -> None:
        self.what = what
        self.current = current
        self.wanted = wanted
        extra = f": {note}" if note else ""
        super().__init__(f"{what} is {current}, so it cannot become {wanted}{extra}")


class SiteError(B2CalError):
    """A site file that cannot be used as written, or a site that does not exist."""

    def __init__(self, site: str, reason: str) -> None:
        self.site = site
        self.reason = reason
        super().__init__(f"site {site}: {reason}")


# --- identities and permissions -----------------------------------------------------------------
class NotAuthenticated(B2CalError):
    """A certificate, proxy or VOMS attribute certificate that does not prove who is acting:
    untrusted, expired, revoked, forged, for another VO. ``reason`` says which, for the log
    and the refusal."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"not authenticated: {reason}")


class NotAllowed(B2CalError):
    """An authenticated identity whose roles do not allow the action on its target."""

    def __init__(self, who: str, action: str, target: str, needs: str) -> None:
        self.who, self.action, self.target, self.needs = who, action, target, needs
        super().__init__(f"{who} may not {action} {target}: it needs {needs}")


# --- services: the orchestrator, the HTTPS API --------------------------------------------------
class OrchestratorUnreachable(B2CalError):
    """The Prefect API cannot be reached (or refuses us)."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        super().__init__(
            f"Prefect API {url} cannot be reached: {reason} (start the local stack with "
            "`b2cal server up`, or set PREFECT_API_URL)"
        )


class UnsupportedBody(B2CalError):
    """An API request body that is not JSON by its Content-Type (415)."""


class MethodNotAllowed(B2CalError):
    """An API URL asked with a method it does not take (405); ``methods``: those it takes."""

    def __init__(self, path: str, methods: list[str]) -> None:
        super().__init__(f"{path} takes {', '.join(methods)}")
        self.methods = methods
