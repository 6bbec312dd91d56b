"""Sites: where data lands, where work runs, and the rules each site applies.

A site is a TOML file, ``<sites dir>/<name>.toml``: ``deployments/sites`` of the checkout, or
``B2CAL_SITES_DIR`` for an installed b2cal (docs/orchestration.md describes every key).
``B2CAL_SITE`` names the site of this machine (its worker reads it). Environment variables
override the file: ``B2CAL_SITE_<KEY>`` for a top-level key, ``B2CAL_SITE_<TABLE>__<KEY>``
inside a table (e.g. ``B2CAL_SITE_BACKEND__WORKERS=8``). Secrets never sit in site files:
database URLs with passwords come from ``B2CAL_STATE_URL`` and ``B2CAL_CDB_URL``, which win
over the file's ``state_url`` and ``cdb_url``. In paths, ``{home}`` is b2cal's home folder
(``B2CAL_HOME``).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from b2cal.errors import B2CalError, SiteError
from b2cal.settings import Settings

_CHECKOUT_SITES = Path(__file__).resolve().parents[1] / "deployments" / "sites"


class RequestKind(StrEnum):
    PROMPT = "prompt"
    RECALIBRATION = "recalibration"
    MC = "mc"


class SignoffPolicy(StrEnum):
    """``auto``: a calibration whose validation passes is approved without a person;
    ``expert``: it waits for ``b2cal signoff``."""

    AUTO = "auto"
    EXPERT = "expert"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BucketRule(_Strict):
    """When a bucket closes: once it holds ``runs`` runs, or ``window_hours`` after it opened
    (exactly one of them); ``b2cal bucket close`` closes one at any time."""

    runs: int | None = Field(default=None, gt=0)
    window_hours: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _exactly_one(self) -> BucketRule:
        if (self.runs is None) == (self.window_hours is None):
            raise ValueError("give exactly one of runs and window_hours")
        return self

    def describe(self) -> str:
        if self.runs is not None:
            return f"{self.runs} runs"
        return f"{self.window_hours:g} h of registration time"


class JobResources(_Strict):
    """What one collector job asks its batch system for: the site's defaults, which a
    calibration's ``backend_args`` may override (:meth:`merged`)."""

    cores: int = Field(default=1, gt=0, strict=True)
    memory_mb: int | None = Field(default=None, gt=0, strict=True)
    wall_minutes: int | None = Field(default=None, gt=0, strict=True)
    #: Slurm partition, HTCondor queue or accounting group (None: the system's default).
    queue: str | None = None

    def merged(self, args: Mapping[str, Any], where: str) -> JobResources:
        """These resources with ``args`` (a calibration's ``backend_args``) over them;
        SiteError-free: a bad key or value is a B2CalError naming ``where``."""
        if not args:
            return self
        try:
            return JobResources(**{**self.model_dump(), **dict(args)})
        except ValidationError as exc:
            error = exc.errors()[0]
            key = ".".join(str(part) for part in error["loc"]) or "backend_args"
            raise B2CalError(f"{where}: backend_args {key}: {error['msg']}") from None


class BackendSettings(_Strict):
    """Where the site's collector jobs run, and the limits the site puts on them."""

    #: A backend registered in the ``b2cal.backends`` entry-point group: local, slurm, ...
    name: str = "local"
    #: Worker processes of the local backend (Dask: workers of the cluster b2cal starts); also
    #: the processes that run algorithm executions side by side, up to the machine's cores.
    workers: int = Field(default=2, gt=0)
    #: Collector jobs per batch: a calibration's collection is one Prefect task per batch, and
    #: a batch system gets one submission (a job array) per batch.
    batch_size: int = Field(default=16, gt=0)
    #: Batches of one calibration handed to the backend at once (two keep it busy while a
    #: batch's last jobs finish).
    batches_in_flight: int = Field(default=2, gt=0, le=8)
    #: More attempts of a collector job that failed (killed, lost node, a crash).
    retries: int = Field(default=1, ge=0, le=10)
    #: How often job states are asked for (None: the backend's own default; a batch system
    #: must not be polled every half second).
    poll_seconds: float | None = Field(default=None, gt=0)
    #: At most this many collector jobs queued and running at the site at once, over every
    #: calibration and request (None: no limit).
    job_limit: int | None = Field(default=None, gt=0)
    #: What each collector job asks for, unless its calibration's ``backend_args`` say other.
    resources: JobResources = JobResources()
    #: Folders that batch nodes see at the same paths (the shared filesystem): job folders
    #: outside them are refused at submission. Empty: not checked.
    shared_roots: list[Path] = Field(default_factory=list)
    #: What only one backend reads (Slurm: ``sbatch_args``; Dask: ``scheduler``).
    options: dict[str, Any] = Field(default_factory=dict)
    #: The site file these settings were read from (not a key of it): a backend checking its
    #: ``options`` names the file in its errors.
    _source: Path | None = PrivateAttr(default=None)

    @property
    def source(self) -> Path | None:
        return self._source


class Discovery(_Strict):
    """How a site's discovery runs (when it is on): one flow run scans every ``scan_seconds``
    for ``run_minutes``, then the next one takes over, so a file is registered within about
    ``settle_seconds + scan_seconds`` of landing and a day adds ``24 * 60 / run_minutes``
    discovery runs to the Prefect UI's list."""

    scan_seconds: float = Field(default=60, gt=0)
    run_minutes: float = Field(default=30, gt=0)


class Retention(_Strict):
    """How long an uploaded request's collector outputs stay (payloads and logs are kept)."""

    collector_outputs_days: float = Field(default=14, ge=0)


class Site(BaseSettings):
    """One site's settings, from its TOML file, with ``B2CAL_SITE_*`` overriding the file."""

    model_config = SettingsConfigDict(
        env_prefix="B2CAL_SITE_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    name: str
    description: str = ""
    #: Folders where data files land (the naming of docs/toy-detector.md below each).
    storage_roots: list[Path]
    #: The shared folder where requests' workspaces live: ``<work_root>/requests/<id>/``.
    work_root: Path
    #: The Prefect work pool of the site (default: the site's name).
    work_pool: str = ""
    #: Which request kinds this site runs by default.
    request_kinds: list[RequestKind] = Field(default_factory=lambda: list(RequestKind))
    #: The calibrations of a closed bucket's prompt request (those they depend on are added),
    #: and of ``b2cal request create --bucket`` without ``--calibrations``.
    prompt_calibrations: list[str] = Field(
        default_factory=lambda: ["ChannelT0", "ChannelGain", "ModuleAlignment", "BeamSpot"],
        min_length=1,
    )
    #: A file is registered once its size and mtime have not changed for this long.
    settle_seconds: float = Field(default=60, ge=0)
    buckets: BucketRule = BucketRule(runs=8)
    discovery: Discovery = Discovery()
    backend: BackendSettings = BackendSettings()
    #: State database and conditions database (unset: ``B2CAL_STATE_URL``/``B2CAL_CDB_URL``,
    #: else SQLite files under b2cal's home).
    state_url: str | None = None
    cdb_url: str | None = None
    #: The tag reconstruction reads; validation compares against it unless a request names
    #: another reference tag.
    running_tag: str = "running"
    #: Sign-off per calibration; ``default`` for those not named.
    signoff: dict[str, SignoffPolicy] = Field(
        default_factory=lambda: {"default": SignoffPolicy.EXPERT}
    )
    retention: Retention = Retention()
    #: A request whose flow run crashed (its process, its worker or its node died) is retried
    #: by b2cal this many times, the n-th retry ``crash_backoff_seconds * 2**(n-1)`` after the
    #: crash (a failing calibration is not a crash: it is never retried this way).
    crash_retries: int = Field(default=2, ge=0, le=10)
    crash_backoff_seconds: float = Field(default=10.0, ge=0)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (env_settings, init_settings)

    @field_validator("name", "work_pool")
    @classmethod
    def _simple_name(cls, value: str) -> str:
        if value and not value.replace("-", "").replace("_", "").isalnum():
            raise ValueError("use letters, digits, '-' and '_' only")
        return value

    @model_validator(mode="after")
    def _defaults(self) -> Site:
        if not self.work_pool:
            object.__setattr__(self, "work_pool", self.name)
        return self

    def signoff_policy(self, calibration: str) -> SignoffPolicy:
        return self.signoff.get(calibration, self.signoff.get("default", SignoffPolicy.EXPERT))

    @property
    def state_database_url(self) -> str:
        settings = Settings()
        return settings.state_url or self.state_url or settings.state_database_url

    @property
    def cdb_database_url(self) -> str:
        settings = Settings()
        return settings.cdb_url or self.cdb_url or settings.cdb_database_url

    def request_folder(self, request_id: int) -> Path:
        """The workspace of a request: keyed by request id, so a retried flow finds its work."""
        return self.work_root / "requests" / str(request_id)


#: What a site's name may be: it names a file, so never a path.
SITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def check_site_name(name: str) -> str:
    """``name`` if it can be a site's name; SiteError (without any path) otherwise."""
    if not SITE_NAME.fullmatch(name):
        shown = name if len(name) <= 40 else name[:40] + "..."
        raise SiteError(shown, "not a site name (letters, digits, '-' and '_', at most 64)")
    return name


def sites_dir() -> Path:
    """Where site files are: ``B2CAL_SITES_DIR``, else the checkout's ``deployments/sites``."""
    configured = Settings().sites_dir
    return configured if configured is not None else _CHECKOUT_SITES


def site_names() -> list[str]:
    folder = sites_dir()
    return sorted(p.stem for p in folder.glob("*.toml")) if folder.is_dir() else []


def _expand(value: Any, home: Path) -> Any:
    """``{home}`` in every string of the file, and ``~``, for paths that work anywhere."""
    if isinstance(value, str):
        return value.replace("{home}", str(home))
    if isinstance(value, list):
        return [_expand(v, home) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v, home) for k, v in value.items()}
    return value


def load_site(name: str | None = None) -> Site:
    """The named site (default: ``B2CAL_SITE``, else ``local``), checked; SiteError if not."""
    settings = Settings()
    name = check_site_name(name or settings.site)
    path = sites_dir() / f"{name}.toml"
    if not path.is_file():
        known = ", ".join(site_names()) or "none"
        raise SiteError(name, f"no site file {path} (known sites: {known})")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SiteError(name, f"{path}: {exc}") from None
    data = _expand(data, settings.home)
    data.setdefault("name", name)
    if data["name"] != name:
        raise SiteError(name, f"{path} names itself {data['name']!r}")
    try:
        site = Site(**data)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or "file"
        raise SiteError(name, f"{path} [{where}]: {error['msg']}") from None
    site.backend._source = path
    roots = [Path(p).expanduser() for p in site.storage_roots]
    return site.model_copy(
        update={"storage_roots": roots, "work_root": Path(site.work_root).expanduser()}
    )
