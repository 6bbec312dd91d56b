"""Engine overhead: `b2cal caf run` against a bare multiprocessing script (bare_caf.py).

Both run the four reference calibrations on the same toy files with two worker processes,
calling the same collector and algorithm code, each as a fresh process (imports included). The
ratio b2cal / bare is what the engine's job files, checks, resume bookkeeping, output databases,
provenance and progress display cost.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from common import EXP, RUNS, best_of, make_storage
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).parent
B2CAL = Path(sys.executable).parent / "b2cal"
CALIBRATIONS = "ChannelT0,ChannelGain,ModuleAlignment,BeamSpot"


def main() -> int:
    storage = make_storage(events=5000, files_per_run=4)
    runs = f"{RUNS[0]}-{RUNS[-1]}"
    outputs = iter(range(1000))

    def engine() -> None:
        output = storage.parent / f"out{next(outputs)}"
        command = [
            str(B2CAL), "caf", "run", "--storage", str(storage), "--exp", str(EXP),
            "--runs", runs, "--calibrations", CALIBRATIONS, "--output", str(output),
            "--workers", "2",
        ]  # fmt: skip
        subprocess.run(command, check=True, capture_output=True)

    def bare() -> None:
        command = [sys.executable, str(HERE / "bare_caf.py"), str(storage), str(EXP)]
        subprocess.run([*command, str(RUNS[0]), str(RUNS[-1])], check=True, capture_output=True)

    bare()  # warm the page cache
    base = best_of(3, bare)
    ours = best_of(3, engine)
    table = Table(title="engine overhead: b2cal caf run / bare multiprocessing script")
    for column in ("files", "bare script [s]", "b2cal caf run [s]", "ratio"):
        table.add_column(column, justify="right")
    files = sum(1 for _ in storage.rglob("*.root"))
    table.add_row(str(files), f"{base:.2f}", f"{ours:.2f}", f"{ours / base:.2f}")
    Console().print(table)
    shutil.rmtree(storage.parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
