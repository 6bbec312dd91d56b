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
            help="Turn on these sites' discovery (their discover-data deployments resumed; "
            "the first run starts now).",
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
    heartbeat_timeout: Annotated[
        int,
        typer.Option(
            metavar="SECONDS",
            help="A running flow run without a heartbeat this long is marked Crashed "
            "(Prefect sends one every 30 s).",
            min=45,
        ),
    ] = 90,
    reconcile_seconds: Annotated[
        float,
        typer.Option(
            metavar="SECONDS",
            help="How often each site's reconciler looks for crashed runs to heal; a crash is "
            "seen within the heartbeat timeout plus this.",
            min=1,
        ),
    ] = 30.0,
    prefect_database: Annotated[
        str | None,
        typer.Option(
            metavar="URL",
            help="The Prefect server's database, postgresql+asyncpg://USER:PASSWORD@HOST/DB "
            "(with the pg_trgm extension; what a site runs). Default: "
            "B2CAL_PREFECT_DATABASE_URL, else SQLite in B2CAL_HOME/server/prefect. A server "
            "already up keeps its database.",
        ),
    ] = None,
) -> None:
    """Start the local stack (what runs already is kept); prints where the UI is."""
    from b2cal.cli.console import console, errors
    from b2cal.orchestrator.profile import PROFILE, export_line
    from b2cal.orchestrator.stack import LocalStack, StackOptions, site_list

    options = StackOptions(
        port=port,
        sites=site_list(sites),
        discover=discover,
        worker_poll_seconds=poll,
        notify_url=notify_url,
        heartbeat_timeout=heartbeat_timeout,
        reconcile_seconds=reconcile_seconds,
        prefect_database=prefect_database,
    )
    stack = LocalStack()
    with errors.status("starting the local stack") as shown:

        def say(line: str) -> None:
            console.print(line)
            shown.update(line)

        state = stack.up(options, say=say)
    console.print(f"Prefect UI: {state['ui_url']}  (API {state['api_url']})")
    one_shell = export_line(state["api_url"], state.get("auth_string"))
    console.print(
        f"prefect reaches it through the profile {PROFILE!r}, active until `b2cal server down` "
        f"puts yours back (one shell only: {one_shell})"
    )
    console.print(f"logs: {stack.folder / 'logs'}")


@server_app.command("status")
def server_status() -> None:
    """The stack's processes (the flow runs running on this host too), the API's health and
    each pool's workers."""
    from rich.table import Table

    from b2cal.cli.console import console
    from b2cal.orchestrator.launcher import running as detached_runs
    from b2cal.orchestrator.launcher import runs_folder
    from b2cal.orchestrator.stack import LocalStack

    stack = LocalStack()
    state = stack.state()
    table = Table(title=f"Local stack ({stack.folder})")
    for column in ("process", "pid", "running", "log"):
        table.add_column(column)
    for name, pid, alive in stack.processes():
        log = stack.log(name.replace(" ", "-"))
        table.add_row(name, str(pid or "-"), "[green]yes[/]" if alive else "[red]no[/]", str(log))
    for flow_run, pid in detached_runs().items():  # they outlive their worker
        log = runs_folder() / f"{flow_run}.log"
        table.add_row(f"flow run {flow_run[:8]}", str(pid), "[green]yes[/]", str(log))
    console.print(table)
    for name, _, alive in stack.processes():
        site = name.partition(" ")[2]
        if site and not alive and state.get("server_pid"):
            console.print(
                f"[red]{name} is not running[/]: b2cal server up --sites {site} starts it again "
                f"(its log: {stack.log(name.replace(' ', '-'))})"
            )
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
    """Stop the reconcilers, the workers, the flow runs running here, then the server."""
    from b2cal.cli.console import console
    from b2cal.orchestrator.stack import LocalStack

    LocalStack().down(say=console.print)
    console.print("local stack stopped")


@server_app.command("reconcile")
def server_reconcile(
    site: Annotated[str, typer.Option(metavar="SITE", help="The site whose runs it heals.")],
    every: Annotated[
        float, typer.Option(metavar="SECONDS", help="Seconds between passes.", min=1)
    ] = 30.0,
) -> None:
    """The site's reconciler, a service (``server up`` starts one per site): every pass, flow
    runs that crashed, were cancelled outside b2cal or lost their process are seen and their
    requests healed (retried up to the site's ``crash_retries``, else FAILED). Runs until
    SIGTERM or Ctrl-C; each pass's actions are logged as they happen."""
    import logging
    import signal
    import sys
    import threading

    from b2cal.orchestrator.client import use_local_stack
    from b2cal.requests.reconciler import serve
    from b2cal.sites import load_site

    # what the reconciler does, as it happens; the libraries only when they warn (no line per
    # HTTP request or per database connection every pass)
    logging.basicConfig(
        stream=sys.stdout, level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s"
    )
    logging.getLogger("b2cal.reconciler").setLevel(logging.INFO)
    here = load_site(site)
    use_local_stack()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    serve(here, every, stop)
