"""The ``b2cal`` Prefect profile that ``server up`` writes, so that a shell's ``prefect`` reaches
the local stack."""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any

from b2cal.core.files import atomic_write_bytes
from b2cal.errors import B2CalError

PROFILE = "b2cal"


def write_profile(url: str, auth_string: str | None) -> None:
    """A ``b2cal`` Prefect profile with the API address, in the user's Prefect home, so
    ``prefect -p b2cal deployment run ...`` (or PREFECT_PROFILE=b2cal) reaches this stack;
    it becomes the active profile when the active one has no API address."""
    home = Path(os.environ.get("PREFECT_HOME", Path.home() / ".prefect"))
    path = home / "profiles.toml"
    try:
        doc: dict[str, Any] = tomllib.loads(path.read_text()) if path.is_file() else {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise B2CalError(f"Prefect profiles {path} cannot be read: {exc}") from None
    profiles: dict[str, dict[str, Any]] = doc.setdefault("profiles", {})
    active = doc.get("active", "ephemeral")
    profile = {"PREFECT_API_URL": url}
    if auth_string:
        profile["PREFECT_API_AUTH_STRING"] = auth_string
    profiles[PROFILE] = profile
    if "PREFECT_API_URL" not in profiles.get(active, {}):
        doc["active"] = PROFILE
    lines = [f"active = {json.dumps(doc['active'])}" if "active" in doc else ""]
    for name, values in profiles.items():
        lines.append(f"\n[profiles.{json.dumps(name)}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    atomic_write_bytes(path, ("\n".join(lines).strip() + "\n").encode())
