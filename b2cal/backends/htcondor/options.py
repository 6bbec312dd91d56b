"""What a site sets for its HTCondor pool in ``[backend.options]``, checked when the backend is
opened: a wrong key, a secret in the job environment or a Python that execute nodes cannot see
is a one-line error naming the site file, not a job that fails hours later on a node."""

from __future__ import annotations

import re
import socket
import sys
from pathlib import PurePosixPath

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from b2cal.errors import B2CalError
from b2cal.sites import BackendSettings

#: Submit commands b2cal writes itself: a site that set them would break how jobs are found,
#: where they run or what they may read (``getenv`` would copy the driver's secrets).
OWN_KEYS = frozenset(
    {
        "universe", "executable", "arguments", "initialdir", "output", "error", "log",
        "getenv", "environment", "should_transfer_files", "batch_name", "request_cpus",
        "request_memory", "request_disk", "accounting_group", "my.b2caljobdir",
        "+b2caljobdir", "queue",
    }
)  # fmt: skip
#: Late materialization: procs would enter the queue later than the submission, and a job not
#: yet materialized would look like one that had left the queue.
LATE_MATERIALIZATION = frozenset({"max_materialize", "max_idle", "materialize_max_idle"})
#: Environment variables that hold secrets (passwords in database URLs): never in a job ad,
#: which every user of the pool can read and the schedd's history keeps.
SECRET_NAME = re.compile(r"B2CAL_(STATE|CDB)_URL|PASSWORD|PASSWD|SECRET|TOKEN|CREDENTIAL", re.I)
#: A URL with a password in it (``scheme://user:password@host``).
SECRET_VALUE = re.compile(r"://[^/@\s]*:[^/@\s]*@")


class HTCondorOptions(BaseModel):
    """``[backend.options]`` of the htcondor backend."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: The schedd's name (``condor_status -schedd``); unset: the access point's own schedd.
    schedd: str | None = None
    #: The collector that knows the schedd (``host[:port]``); unset: the local pool's.
    pool: str | None = None
    #: The interpreter execute nodes run: on the shared filesystem (checked against
    #: ``shared_roots``); unset: the driver's own.
    python: str | None = None
    #: More submit commands (``"+AccountingGroup"``, ``requirements``...), as in a submit file.
    submit: dict[str, str] = Field(default_factory=dict)
    #: The submit command that carries each job's wall time in seconds (from the resources'
    #: ``wall_minutes``): HTCondor's ``allowed_execute_duration``, or the attribute the pool's
    #: policy reads (DESY NAF: ``+RequestRuntime``).
    wall_time_attribute: str = "allowed_execute_duration"
    #: Ask for credentials (Kerberos/AFS tokens, OAuth) before each submission, as
    #: ``condor_submit`` does on the access point (``Submit.issue_credentials()``). They are
    #: issued for this machine's access point only: refused with a ``schedd`` of another one.
    credentials: bool = False
    #: The job's environment: nothing of the driver's is copied (``getenv`` is never set).
    environment: dict[str, str] = Field(default_factory=dict)
    #: Local scratch each job asks for; jobs write to their folder on the shared filesystem.
    disk_mb: int = Field(default=1000, gt=0)
    #: A job idle this long that the negotiator rejects and that never matched a slot nor
    #: started is failed with the negotiator's reason instead of waiting forever (a full pool
    #: says "no match found" too; priority and quota reasons never fail a job).
    idle_limit_minutes: float = Field(default=720, gt=0)
    #: A job started more often than this (evicted and restarted again and again) is failed.
    max_starts: int = Field(default=3, gt=0)
    #: How long the schedd may not answer before the jobs it holds are failed (the last known
    #: states stand meanwhile).
    unreachable_seconds: float = Field(default=900, gt=0)


def read_options(settings: BackendSettings, where: str) -> HTCondorOptions:
    """The site's options, checked; B2CalError naming ``where`` (the site file) otherwise."""
    try:
        options = HTCondorOptions(**dict(settings.options))
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(part) for part in error["loc"]) or "options"
        message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
        raise B2CalError(f"{where} [backend.options] {key}: {message} (htcondor backend)") from None
    for key in options.submit:
        plain = key.strip().lower()
        if plain in LATE_MATERIALIZATION:
            raise B2CalError(
                f"{where} [backend.options.submit] {key}: late materialization is not supported "
                "(b2cal follows every job from its submission; use [backend] job_limit instead)"
            )
        if plain in OWN_KEYS:
            raise B2CalError(f"{where} [backend.options.submit] {key}: b2cal sets it itself")
    for name, value in options.environment.items():
        if SECRET_NAME.search(name) or SECRET_VALUE.search(value):
            raise B2CalError(
                f"{where} [backend.options.environment] {name}: looks like a secret; job ads "
                "are readable by every user of the pool (jobs need no database password)"
            )
    if options.credentials and options.schedd and not _on_this_machine(options.schedd):
        raise B2CalError(
            f"{where} [backend.options] credentials: issued for this machine's access point "
            f"only (Submit.issue_credentials), not for schedd {options.schedd!r}: run the "
            "driver on that access point and leave schedd unset"
        )
    _check_python(options.python or sys.executable, settings, where)
    return options


def _on_this_machine(schedd: str) -> bool:
    """Whether the schedd's name (``host`` or ``name@host``) is this machine's."""
    host = schedd.rpartition("@")[2].lower()
    names = {socket.getfqdn().lower(), socket.gethostname().lower()}
    return host in names or ("." not in host and host in {n.split(".")[0] for n in names})


def _check_python(python: str, settings: BackendSettings, where: str) -> None:
    """Execute nodes see only the shared filesystem: their interpreter must be on it. The path
    is compared as written (a virtual environment's ``python`` is a link out of it)."""
    path = PurePosixPath(python)
    if not path.is_absolute():
        raise B2CalError(f"{where} [backend.options] python: {python} is not an absolute path")
    roots = [PurePosixPath(str(root)) for root in settings.shared_roots]
    if roots and not any(path.is_relative_to(root) for root in roots):
        raise B2CalError(
            f"{where} [backend.options] python: {python} is not under the shared roots "
            f"({', '.join(map(str, roots))}): execute nodes could not run it"
        )


def source_of(settings: BackendSettings) -> str:
    """The site file the settings came from, for messages."""
    return str(settings.source) if settings.source else "the site's settings"
