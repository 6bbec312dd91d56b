"""What test batch jobs run (``python -m b2cal.backends.launch job_targets:follow DIR``): the
instruction written in the job folder, so a test decides how each job of an array ends."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path


def follow(directory: Path) -> int:
    """``ok``, ``exit N``, ``kill`` (SIGKILL itself) or ``sleep SECONDS``, from ``instruction``."""
    words = (Path(directory) / "instruction").read_text().split()
    print(f"hello from {socket.gethostname()}: {' '.join(words)}", flush=True)
    if words[0] == "exit":
        return int(words[1])
    if words[0] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if words[0] == "sleep":
        time.sleep(float(words[1]))
    return 0
