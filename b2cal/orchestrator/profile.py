"""The ``b2cal`` Prefect profile: ``server up`` points a shell's ``prefect`` at the local stack
through it, and ``server down`` leaves the user's Prefect as it found it.

A person who uses Prefect for other things has profiles of their own in
``$PREFECT_HOME/profiles.toml`` (default ``~/.prefect/``). ``server up`` writes a ``b2cal``
profile there (the API address, and the auth string if the API demands one) and makes it the
active one, so ``prefect deployment run ...`` in any shell reaches the stack; it records what
it changed (:class:`ProfileBefore`: the active profile and a ``b2cal`` profile that was there
before) in the stack's record. ``server down`` puts both back and removes the file if b2cal
made it, so a shell's ``prefect`` never points at a stopped server, and nothing else in the
file changes.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from b2cal.core.files import atomic_write_bytes
from b2cal.errors import B2CalError

PROFILE = "b2cal"


class ProfileBefore(BaseModel):
    """What ``server up`` found in the profiles file, to be put back by ``server down``."""

    file_existed: bool
    #: The active profile before (None: the file named none, Prefect's default applied).
    active: str | None
    #: A ``b2cal`` profile that was there before (None: there was none).
    profile: dict[str, Any] | None


def profiles_path() -> Path:
    return Path(os.environ.get("PREFECT_HOME", Path.home() / ".prefect")) / "profiles.toml"


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text()) if path.is_file() else {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise B2CalError(f"Prefect profiles {path} cannot be read: {exc}") from None


def _write(path: Path, doc: dict[str, Any]) -> None:
    lines = [f"active = {json.dumps(doc['active'])}"] if doc.get("active") else []
    for name, values in doc.get("profiles", {}).items():
        lines.append(f"\n[profiles.{json.dumps(name)}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    atomic_write_bytes(path, ("\n".join(lines).strip() + "\n").encode())


def point_at(url: str, auth_string: str | None) -> ProfileBefore:
    """Write the ``b2cal`` profile for ``url`` and make it active; returns what was there."""
    path = profiles_path()
    doc = _read(path)
    profiles: dict[str, dict[str, Any]] = doc.setdefault("profiles", {})
    before = ProfileBefore(
        file_existed=path.is_file(), active=doc.get("active"), profile=profiles.get(PROFILE)
    )
    profile = {"PREFECT_API_URL": url}
    if auth_string:
        profile["PREFECT_API_AUTH_STRING"] = auth_string
    profiles[PROFILE] = profile
    doc["active"] = PROFILE
    _write(path, doc)
    return before


def restore(before: ProfileBefore) -> None:
    """Put back the active profile and the ``b2cal`` profile that :func:`point_at` found; a
    profile someone activated since is left active."""
    path = profiles_path()
    doc = _read(path)
    profiles: dict[str, dict[str, Any]] = doc.setdefault("profiles", {})
    if before.profile is None:
        profiles.pop(PROFILE, None)
    else:
        profiles[PROFILE] = before.profile
    if doc.get("active") in (PROFILE, None):
        if before.active is None:
            doc.pop("active", None)
        else:
            doc["active"] = before.active
    if not before.file_existed and not profiles and not doc.get("active"):
        path.unlink(missing_ok=True)
        return
    _write(path, doc)


def export_line(url: str, auth_string: str | None = None) -> str:
    """The line that points one shell's ``prefect`` at ``url`` without any profile (the auth
    string, a secret, is named, not printed)."""
    line = f"export PREFECT_API_URL={url}"
    if auth_string:
        line += " PREFECT_API_AUTH_STRING=$B2CAL_PREFECT_AUTH_STRING"
    return line
