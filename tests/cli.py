"""Running the real ``b2cal`` command as a user would: in a subprocess, or inside the test's
own process where a test needs no process of its own.

Running inside saves the ~0.5 s of CPU each new interpreter costs (imports), which over the
unit tier's hundred-odd commands is most of a minute on two cores. It goes through the same
``main`` the installed script calls (exit status, one-line errors, crash logs); what it cannot
show is a signal or a crash of the command's own process: those tests use :func:`b2cal`.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from collections.abc import Iterator
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


def b2cal_inline(
    *args: str | Path, plugins: bool = False, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """:func:`b2cal`, run by calling the command's ``main`` inside this process."""
    from b2cal.cli import main
    from b2cal.cli.console import console, errors

    argv = list(map(str, args))
    # text streams over bytes, as a process's are: some commands write bytes (``cdb get``)
    out, err = (io.TextIOWrapper(io.BytesIO(), encoding="utf-8", newline="") for _ in "12")
    with (
        _environment(environment(plugins, env)),
        _import_path([str(PLUGINS), str(TESTS)] if plugins else []),
        _width(console, errors),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        status = main(argv)
    printed = []
    for stream in (out, err):
        stream.flush()
        printed.append(stream.buffer.getvalue().decode())  # type: ignore[attr-defined]
    return subprocess.CompletedProcess([str(B2CAL), *argv], status, *printed)


@contextlib.contextmanager
def _environment(wanted: dict[str, str]) -> Iterator[None]:
    """Only the variables that differ are set and restored: threads of the test's process
    (an in-process server) never see an empty environment."""
    saved = {k: os.environ.get(k) for k in set(wanted) | set(os.environ)}
    changed = {k for k in saved if saved[k] != wanted.get(k)}
    for key in changed:
        if key in wanted:
            os.environ[key] = wanted[key]
        else:
            del os.environ[key]
    try:
        yield
    finally:
        for key in changed:
            if saved[key] is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = saved[key]  # type: ignore[assignment]


@contextlib.contextmanager
def _import_path(extra: list[str]) -> Iterator[None]:
    saved = list(sys.path)
    sys.path[:0] = extra
    try:
        yield
    finally:
        sys.path[:] = saved


@contextlib.contextmanager
def _width(*consoles: object) -> Iterator[None]:
    """The width a subprocess gets from COLUMNS=200 (the consoles read it once, at import)."""
    saved = [c._width for c in consoles]  # type: ignore[attr-defined]
    for c in consoles:
        c._width = 200  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for c, width in zip(consoles, saved, strict=True):
            c._width = width  # type: ignore[attr-defined]


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
