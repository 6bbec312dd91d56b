"""Running the real ``b2cal`` command in a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

#: Calibration plugins for tests, found through entry points when this folder is on the path
#: (with tests/ itself, where the plugins' shared code lives).
PLUGINS = Path(__file__).parent / "plugins"
TESTS = Path(__file__).parent
B2CAL = Path(sys.executable).parent / "b2cal"


def environment(plugins: bool, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ, COLUMNS="200", **(extra or {}))
    if plugins:
        paths = [str(PLUGINS), str(TESTS), env.get("PYTHONPATH")]
        env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    return env


def b2cal(
    *args: str | Path, plugins: bool = False, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(B2CAL), *map(str, args)],
        capture_output=True,
        text=True,
        env=environment(plugins, env),
        timeout=600,
    )


def start_b2cal(
    *args: str | Path, plugins: bool = False, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(B2CAL), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(plugins, env),
        start_new_session=True,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """Bad input: exit 1, a single ``error:`` line naming the culprit, no traceback."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
