"""b2cal's settings: ``B2CAL_*`` environment variables, else ``b2cal.toml``, else defaults.

The defaults make a laptop work with nothing configured (an embedded conditions database under
``~/.b2cal``); a site points the same code at its production services by configuration only,
e.g. ``B2CAL_CDB_URL=https://cdb.example.org/api/cdb_rest/`` for a nopayloaddb server or
``B2CAL_CDB_URL=postgresql+psycopg://user@host/cdb`` for an embedded store on PostgreSQL.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="B2CAL_", toml_file=os.environ.get("B2CAL_CONFIG", "b2cal.toml"), extra="ignore"
    )

    #: Where b2cal keeps its local state when nothing else is configured.
    home: Path = Field(default_factory=lambda: Path.home() / ".b2cal")
    #: Conditions database: an SQLAlchemy URL (embedded store) or http(s) URL (nopayloaddb).
    cdb_url: str | None = None
    #: Where the embedded store keeps payload files (content-addressed by md5); unset: beside
    #: an SQLite database file, or under ``home`` for a database server.
    cdb_payloads: Path | None = None
    #: Bearer token for writes to a nopayloaddb server.
    cdb_token: SecretStr | None = None
    #: This machine's site (selects <sites_dir>/<site>.toml).
    site: str = "local"
    #: Where site files are (unset: the checkout's deployments/sites).
    sites_dir: Path | None = None
    #: b2cal's state database (files, buckets, requests, calibration runs, sign-offs): an
    #: SQLAlchemy URL; unset: the site file's ``state_url``, else SQLite under ``home``.
    state_url: str | None = None
    #: The experiment's VO: VOMS attributes of other VOs are refused.
    vo: str = "belle"
    #: Where the VO's member list is read (unset: no sync), and in which form (json or scim).
    vo_members_url: str | None = None
    vo_members_kind: str = "json"
    #: Bearer token for the member list (IAM: a token with the scim:read scope).
    vo_members_token: SecretStr | None = None
    #: FQANs (or VO group paths) and the grant each gives; ``{vo}`` is the VO's name. A grant is
    #: a role (viewer, expert, coordinator, admin), an expert's optionally ``expert:CalA,CalB``.
    role_map: dict[str, str] = Field(
        default_factory=lambda: {
            "/{vo}": "viewer",
            "/{vo}/Role=calibration": "expert",
            "/{vo}/calibration": "expert",
            "/{vo}/Role=coordinator": "coordinator",
            "/{vo}/Role=admin": "admin",
        }
    )

    #: What the HTTPS API and the dashboard (behind nginx) trust: CA certificates (a folder
    #: of PEM files or a bundle), their CRLs (unset: beside the CAs) and the VOMS servers'
    #: certificates, one folder per VO — where grid machines keep them.
    ca_path: Path = Path("/etc/grid-security/certificates")
    crl_path: Path | None = None
    voms_dir: Path = Path("/etc/grid-security/vomsdir")
    #: The HTTPS API's host certificate and key.
    api_cert: Path = Path("/etc/grid-security/hostcert.pem")
    api_key: Path = Path("/etc/grid-security/hostkey.pem")
    #: Seconds between looks at the CA, CRL and VOMS files (fetch-crl replaces CRLs while the
    #: API and the dashboard run): a revocation counts within this period, also for a
    #: connection or a dashboard session already open.
    trust_reload_seconds: float = Field(default=60.0, gt=0)
    #: The HTTPS API's bounds on a client: seconds for a TLS handshake and for a whole request
    #: once its first byte came (a client that drips bytes is cut off), seconds a kept-alive
    #: connection may wait idle for its next request, and connections open at once from one
    #: address (more are closed at once).
    api_request_seconds: float = Field(default=20.0, gt=0)
    api_idle_seconds: float = Field(default=30.0, gt=0)
    api_connections_per_address: int = Field(default=32, ge=1)
    #: How far a constant may move from one bucket to the next before the dashboard flags
    #: drift: ``"Calibration.field"`` (or ``"Calibration"`` for all its fields) -> the largest
    #: change of the field's mean, in its own unit.
    drift_tolerance: dict[str, float] = Field(
        default_factory=lambda: {
            "ChannelT0.t0": 0.5,
            "ChannelGain.gain": 0.05,
            "ModuleAlignment.du": 5.0,
            "BeamSpot.x": 0.005,
            "BeamSpot.y": 0.005,
            "BeamSpot.z": 0.05,
        }
    )
    #: The HTTPS API that acting commands use with ``--api`` (e.g. ``https://b2cal.example:8443``).
    api_url: str | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    @property
    def cdb_database_url(self) -> str:
        return self.cdb_url or f"sqlite:///{self.home / 'cdb.sqlite'}"

    @property
    def state_database_url(self) -> str:
        return self.state_url or f"sqlite:///{self.home / 'state.sqlite'}"

    @property
    def cdb_payload_dir(self) -> Path:
        return self.cdb_payloads or self.home / "payloads"
