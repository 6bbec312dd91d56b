"""What the batch benchmarks' jobs run: as little as a job can do (one small file written)."""

from __future__ import annotations

from pathlib import Path


def touch(directory: Path) -> int:
    (Path(directory) / "done").write_text("ok\n")
    return 0
