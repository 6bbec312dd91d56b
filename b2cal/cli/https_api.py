"""``b2cal api``: serve a site's HTTPS API, and ask one who it takes you for.

``serve`` is a service the user asks for: it runs in the foreground until Ctrl-C or SIGTERM
and then stops cleanly. Acting commands reach a remote API with ``--api URL``.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from typing import Annotated

import typer

from b2cal.cli.sites import Json, SiteOption, open_site

api_app = typer.Typer(help="b2cal's HTTPS API for scripts and grid proxies.", no_args_is_help=True)

ApiOption = Annotated[
    str | None,
    typer.Option(
        "--api",
        metavar="URL",
        help="Act through the HTTPS API at URL (e.g. https://b2cal.example:8443) with your grid "
        "proxy (X509_USER_PROXY or /tmp/x509up_u<uid>) instead of this machine's databases.",
    ),
]


@api_app.command("serve")
def serve(
    site: SiteOption = None,
    host: Annotated[str, typer.Option(metavar="ADDRESS", help="Address to listen on.")] = "0.0.0.0",
    port: Annotated[int, typer.Option(metavar="PORT", help="Port to listen on.")] = 8443,
) -> None:
    """Serve the site's API: TLS with client certificates or VOMS proxies, every action
    through the role policy. Certificates: B2CAL_API_CERT, B2CAL_API_KEY; trust:
    B2CAL_CA_PATH, B2CAL_CRL_PATH, B2CAL_VOMS_DIR (grid defaults under /etc/grid-security)."""
    from b2cal.api.server import open_server
    from b2cal.cli.console import console
    from b2cal.settings import Settings

    settings = Settings()
    log_file = settings.home / "logs" / "api.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s"))
    logger = logging.getLogger("b2cal.api")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    server = open_server(open_site(site), host, port, settings)
    shown = f"[{host}]" if ":" in host else host
    console.print(
        f"serving the API of site {server.api.site.name} on https://{shown}:{server.server_port}"
        f"/api/v1 (log: {log_file}); Ctrl-C stops it"
    )
    worker = threading.Thread(target=server.serve_forever, name="api", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.5)
    except KeyboardInterrupt:
        console.print("stopping the API")
    finally:
        server.shutdown()
        server.server_close()
        server.api.db.close()
        logger.removeHandler(handler)
        handler.close()


@api_app.command("whoami")
def whoami(
    url: Annotated[str, typer.Argument(metavar="URL", help="The API, e.g. https://host:8443.")],
    as_json: Json = False,
) -> None:
    """Who the API takes your credential for, and what it lets you do."""
    from b2cal.api.client import ApiClient
    from b2cal.cli.console import console

    with ApiClient(url) as client:
        doc = client.get("/whoami")
    if as_json:
        sys.stdout.write(json.dumps(doc, indent=1) + "\n")
        return
    console.print(f"{doc['dn']} (by {doc['via']})")
    for fqan in doc["fqans"]:
        console.print(f"  VOMS: {fqan}")
    grants = (
        ", ".join(doc["grants"])
        or f"none ({doc.get('registry') or 'no registry entry'}; no mapped role)"
    )
    console.print(f"  grants: {grants}")
