"""Parsing of command-line values shared by several commands, and the exit statuses."""

from __future__ import annotations

import re

from b2cal.errors import B2CalError

EXIT_OK, EXIT_BAD_INPUT, EXIT_CALIBRATION_FAILED = 0, 1, 2
#: Ctrl-C and SIGTERM, as shells report SIGINT and SIGTERM.
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143


def parse_runs(text: str) -> tuple[int, int]:
    """``"A-B"`` (inclusive) or ``"A"`` -> (first, last)."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", text)
    if match is None:
        raise B2CalError(f"invalid run range {text!r}: expected A-B or A (run numbers >= 0)")
    first = int(match[1])
    last = int(match[2]) if match[2] is not None else first
    if last < first:
        raise B2CalError(f"invalid run range {text!r}: it ends before it starts")
    return first, last


def parse_int_list(text: str, option: str) -> list[int]:
    if not text.strip():
        return []
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise B2CalError(f"{option} takes comma-separated run numbers, got {text!r}") from None


def parse_low_stat(text: str) -> dict[int, int]:
    result: dict[int, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        match = re.fullmatch(r"(\d+)=(\d+)", part)
        if match is None:
            raise B2CalError(f"--low-stat takes RUN=EVENTS,..., got {part!r}")
        result[int(match[1])] = int(match[2])
    return result
