"""The ``b2cal`` command.

Every command exits non-zero with a one-line ``error: ...`` on bad input and never prints a
traceback; unexpected errors are reported in one line too, with the full traceback written to
a log file that the line names. SIGTERM (what batch systems and ``kill`` send) is handled like
Ctrl-C: work stops cleanly, the command says how to resume and exits 143 (130 for Ctrl-C).
Each command group lives in its own module.
Help names values by their metavars, never by Python types (:func:`name_values`).
"""

from __future__ import annotations

import os
import sys
import tempfile
import traceback
from collections.abc import Sequence
from typing import Annotated

import typer
from typer.core import TyperGroup

from b2cal import __version__
from b2cal.cli.arguments import (
    EXIT_BAD_INPUT,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    name_values,
)
from b2cal.cli.caf import caf_app, calibrations_app
from b2cal.cli.cdb import cdb_app
from b2cal.cli.dashboard import dashboard
from b2cal.cli.discovery import bucket_app, discover, files_app
from b2cal.cli.https_api import api_app
from b2cal.cli.jobs import jobs_app
from b2cal.cli.requests import request_app
from b2cal.cli.server import server_app
from b2cal.cli.signals import interruption, sigterm_as_interrupt, terminated
from b2cal.cli.signoff import signoff, status
from b2cal.cli.toy import toy_app
from b2cal.cli.users import users_app
from b2cal.errors import B2CalError

app = typer.Typer(
    name="b2cal",
    help="Automated detector calibration: CAF engine, toy detector, conditions database, "
    "Prefect orchestration.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(toy_app, name="toy")
app.add_typer(caf_app, name="caf")
app.add_typer(calibrations_app, name="calibrations")
app.add_typer(cdb_app, name="cdb")
app.command("discover")(discover)
app.add_typer(bucket_app, name="bucket")
app.add_typer(files_app, name="files")
app.add_typer(request_app, name="request")
app.add_typer(jobs_app, name="jobs")
app.command("status")(status)
app.command("signoff")(signoff)
app.add_typer(server_app, name="server")
app.add_typer(users_app, name="users")
app.add_typer(api_app, name="api")
app.command("dashboard")(dashboard)


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        typer.echo(f"b2cal {__version__}")
        raise typer.Exit()


def build_command() -> TyperGroup:
    """The ``b2cal`` command as it runs, its help naming values as :func:`name_values` says."""
    command = typer.main.get_group(app)
    name_values(command)
    return command


def _interrupted() -> int:
    """Say how to resume; the exit status of the signal that stopped us."""
    _error(f"{interruption()}; rerun the same command to resume")
    return EXIT_TERMINATED if terminated() else EXIT_INTERRUPTED


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (see module docstring)."""
    args = list(sys.argv[1:] if argv is None else argv)
    with sigterm_as_interrupt():
        return _main(args)


def _main(args: list[str]) -> int:
    command = build_command()
    try:
        status = command.main(args=args, prog_name="b2cal", standalone_mode=False)
    except B2CalError as exc:
        _error(str(exc))
        return EXIT_BAD_INPUT
    except typer.Abort:
        return _interrupted()
    except typer.TyperException as exc:  # usage errors: missing option, bad value
        format_message = getattr(exc, "format_message", None)
        message = format_message() if format_message else str(exc)
        if message.strip():  # empty for a bare command group: its help was printed
            _error(message)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return _interrupted()
    except OSError as exc:  # a path that is a file, not a folder; no permission; disk full
        where = f": {exc.filename}" if exc.filename else ""
        _error(f"{exc.strerror or type(exc).__name__}{where}")
        return EXIT_BAD_INPUT
    except Exception as exc:
        fd, log = tempfile.mkstemp(prefix="b2cal-crash-", suffix=".log")
        with os.fdopen(fd, "w") as handle:
            handle.write(traceback.format_exc())
        _error(f"internal error {type(exc).__name__}: {exc} (traceback in {log})")
        return EXIT_BAD_INPUT
    if status == EXIT_INTERRUPTED:  # typer turns Ctrl-C (and our SIGTERM) into this status
        return _interrupted()
    return status if isinstance(status, int) else EXIT_OK


def _error(message: str) -> None:
    first_line = " ".join(message.split())
    print(f"error: {first_line}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
