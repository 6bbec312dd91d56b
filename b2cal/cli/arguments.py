"""Parsing of command-line values shared by several commands, how help names them, and the
exit statuses."""

from __future__ import annotations

import re

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from b2cal.errors import B2CalError

EXIT_OK, EXIT_BAD_INPUT, EXIT_CALIBRATION_FAILED = 0, 1, 2
#: Ctrl-C and SIGTERM, as shells report SIGINT and SIGTERM.
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143


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


def parse_placement(values: list[str] | None) -> dict[str, str]:
    """``--place CAL=SITE`` (repeated) as calibration -> site."""
    placement: dict[str, str] = {}
    for value in values or []:
        match = re.fullmatch(r"\s*([A-Za-z_][\w.-]*)\s*=\s*([\w-]+)\s*", value)
        if match is None:
            raise B2CalError(f"--place takes CALIBRATION=SITE, got {value!r}")
        placement[match[1]] = match[2]
    return placement


class _Option(TyperOption):
    """An option as help shows it: its metavar or its name in capitals; nothing for a flag."""

    def display_type_rich(self, ctx: object) -> str | None:
        if self.is_flag or self.count:
            return None
        return self.metavar or (self.name or "value").upper()


class _Argument(TyperArgument):
    """An argument as help shows it: by its name (or metavar) alone."""

    def display_type_rich(self, ctx: object) -> str | None:
        return None


def name_values(command: object) -> None:
    """Make the help of ``command`` and all its subcommands name values, not Python types.

    typer (0.29) shows the Python type of every value in help: ``<bool>`` even after a flag,
    which takes no value, ``<list[Path]>`` for a repeated option, and an argument's type even
    when it has a metavar; no setting turns that off. So every parameter, ``--help`` included,
    gets the subclass that shows the value's metavar (``--output DIR``), else the option's name
    in capitals (``--tag TAG``), and nothing for a flag or an argument. Parsing is unchanged.
    """
    if not isinstance(command, TyperCommand | TyperGroup):
        return
    help_option = command.get_help_option(typer.Context(command))  # made once, then kept
    for param in [*command.params, help_option]:
        if isinstance(param, TyperOption):
            param.__class__ = _Option
        elif isinstance(param, TyperArgument):
            param.__class__ = _Argument
    if isinstance(command, TyperGroup):
        for subcommand in command.commands.values():
            name_values(subcommand)
