"""Run one job in this process: ``python -m b2cal.backends.launch module:function JOB_DIR``.

What a batch job executes (:meth:`b2cal.backends.base.Job.argv`), and what the local backend's
workers do in-process (:func:`call`). The exit status is the function's: 0 for success.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path


def resolve(target: str) -> Callable[[Path], int]:
    """The function named by ``"module:function"``."""
    module_name, _, function_name = target.partition(":")
    if not module_name or not function_name:
        raise ValueError(f"not a job target: {target!r} (expected module:function)")
    function: Callable[[Path], int] = getattr(importlib.import_module(module_name), function_name)
    return function


def call(target: str, directory: Path) -> int:
    """Run the job: the function's exit status."""
    return int(resolve(target)(Path(directory)))


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: python -m b2cal.backends.launch module:function JOB_DIR", file=sys.stderr)
        return 2
    return call(args[0], Path(args[1]))


if __name__ == "__main__":
    sys.exit(main())
