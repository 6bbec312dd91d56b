"""A real single-node Slurm on loopback for the batch-backend tests, started and stopped by the
project's own script (scripts/slurm.sh, which installs Debian's packages if they are missing).

Where it cannot be had (no root to install it, no Debian), its tests are skipped saying why;
under CI=true that fails the run instead.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from unavailable import unavailable

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "slurm.sh"


@contextmanager
def slurm_cluster(state: Path) -> Iterator[Path]:
    """Slurm up for the block; its configuration file (for SLURM_CONF)."""
    started = subprocess.run(
        ["bash", str(SCRIPT), "up", str(state)], capture_output=True, text=True, timeout=300
    )
    if started.returncode != 0:
        unavailable(f"no Slurm on loopback: {started.stderr.strip().splitlines()[-1:]}")
    try:
        yield state / "slurm.conf"
    finally:
        subprocess.run(["bash", str(SCRIPT), "down", str(state)], capture_output=True, timeout=120)
