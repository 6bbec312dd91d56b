"""Processes named so that a reused PID is never taken for the one meant: a PID with the time
its process started (clock ticks since boot, from ``/proc``)."""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel

from b2cal.core.files import atomic_write_json


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


def with_environment(entry: str) -> list[int]:
    """The processes of this user whose environment holds ``entry`` (``NAME=value``): how
    the processes of one flow run are found when they do not share a process group (Prefect's
    supervisor starts the flow's engine in a session of its own)."""
    wanted = entry.encode()
    found = []
    proc = Path("/proc")
    for path in proc.iterdir() if proc.is_dir() else []:
        if not path.name.isdigit() or int(path.name) == os.getpid():
            continue
        try:
            if wanted in (path / "environ").read_bytes().split(b"\0"):
                found.append(int(path.name))
        except OSError:
            continue
    return found


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


class ProcessRecord(BaseModel):
    """Where a process runs, written by itself or by what started it (a flow run's engine; the
    supervisor b2cal's launcher started): read on that host, it says whether the process is
    still there, and never takes a reused PID for it."""

    host: str
    pid: int
    #: When it started (clock ticks since boot): a reused PID is not taken for it.
    started: str | None = None
    #: When it was recorded: a record older than what it is compared with (a flow run's
    #: current state) is an earlier attempt's (None: a record of an older b2cal).
    recorded: datetime | None = None
    #: The Prefect API of the flow run (the launcher's records: ``server down`` stops its own).
    api_url: str | None = None

    @classmethod
    def of(cls, pid: int, api_url: str | None = None) -> ProcessRecord:
        """The record of process ``pid`` of this host, now."""
        return cls(host=socket.gethostname(), pid=pid, started=started(pid),
                   recorded=datetime.now(UTC), api_url=api_url)  # fmt: skip

    @classmethod
    def read(cls, path: Path) -> ProcessRecord | None:
        """The record at ``path`` (None if there is none, or it cannot be read)."""
        try:
            return cls.model_validate_json(path.read_bytes())
        except (OSError, ValueError):
            return None

    def write(self, path: Path) -> None:
        atomic_write_json(path, self.model_dump(mode="json"))

    def here(self) -> bool:
        """Whether it is a process of this host."""
        return self.host == socket.gethostname()

    def alive(self) -> bool:
        """Whether the process is still there (the one that started then, if that is known)."""
        return alive(self.pid, self.started)
