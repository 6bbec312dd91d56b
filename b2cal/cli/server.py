"""``b2cal server up|status|down``: the local stack (Prefect server, site workers,
deployments, automations), a service that stays up until ``server down``."""

from __future__ import annotations

from typing import Annotated

import typer

server_app = typer.Typer(
    help="The local stack: Prefect server on loopback, a worker per site, the deployments.",
    no_args_is_help=True,
)


@server_app.command("up")
def server_up(
    port: Annotated[int, typer.Option(metavar="PORT", help="Port on 127.0.0.1.")] = 4200,
    sites: Annotated[
        str, typer.Option(metavar="S1,S2", help="Sites to start a worker for.")
    ] = "local",
    discover: Annotated[
        bool,
        typer.Option(
            "--discover/--no-discover",
            help="Turn on these sites' scheduled discovery (and run it once now).",
        ),
    ] = True,
    poll: Annotated[
        float, typer.Option(metavar="SECONDS", help="How often workers ask for new runs.")
    ] = 2.0,
    notify_url: Annotated[
        str | None,
        typer.Option(
            metavar="URL",
            help="Webhook that hears of failed flow runs and of calibrations awaiting sign-off.",
        ),
    ] = None,
) -> None:
    """Start the local stack (what runs already is kept); prints where the UI is."""
    from b2cal.cli.console import console, errors
    from b2cal.orchestrator.stack import LocalStack, StackOptions, site_list

    options = StackOptions(
        port=port,
        sites=site_list(sites),
        discover=discover,
        worker_poll_seconds=poll,
        notify_url=notify_url,
    )
    stack = LocalStack()
    with errors.status("starting the local stack") as shown:

        def say(line: str) -> None:
            console.print(line)
            shown.update(line)

        state = stack.up(options, say=say)
    console.print(f"Prefect UI: {state['ui_url']}  (API {state['api_url']}, profile b2cal)")
    console.print(f"logs: {stack.folder / 'logs'}")


@server_app.command("status")
def server_status() -> None:
    """The stack's processes, the API's health and each pool's workers."""
    from rich.table import Table

    from b2cal.cli.console import console
    from b2cal.orchestrator.stack import LocalStack

    stack = LocalStack()
    state = stack.state()
    table = Table(title=f"Local stack ({stack.folder})")
    for column in ("process", "pid", "running", "log"):
        table.add_column(column)
    for name, pid, alive in stack.processes():
        log = stack.log(name.replace(" ", "-"))
        table.add_row(name, str(pid or "-"), "[green]yes[/]" if alive else "[red]no[/]", str(log))
    console.print(table)
    if not state.get("server_pid"):
        console.print("stopped: b2cal server up starts it")
    elif state.get("api_url"):
        from b2cal.errors import B2CalError
        from b2cal.orchestrator.client import check_reachable

        try:
            check_reachable(timeout=3)
            console.print(f"API {state['api_url']}: healthy; UI {state.get('ui_url')}")
        except B2CalError as exc:
            console.print(f"[red]{exc}[/]")


@server_app.command("down")
def server_down() -> None:
    """Stop the workers (and their flow runs), then the server."""
    from b2cal.cli.console import console
    from b2cal.orchestrator.stack import LocalStack

    LocalStack().down(say=console.print)
    console.print("local stack stopped")
