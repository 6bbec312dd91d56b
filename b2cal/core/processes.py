"""Processes named so that a reused PID is never taken for the one meant: a PID with the time
its process started (clock ticks since boot, from ``/proc``)."""

from __future__ import annotations

import os
from pathlib import Path


def started(pid: int) -> str | None:
    """When the process started (None if it is gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def alive(pid: int | None, since: str | None = None) -> bool:
    """Whether the process is there (a zombie counts as gone), and, given ``since``, is the
    one that started then."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return True  # no /proc to ask: it answered the signal
    return stat[0] != "Z" and (since is None or stat[19] == since)


def group_alive(group: int) -> bool:
    """Whether any process of the process group is left (zombies, which only wait for their
    parent to read their status, do not count)."""
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    proc = Path("/proc")
    if not proc.is_dir():
        return True  # no /proc to ask: the group answered the signal
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            return True
    return False
