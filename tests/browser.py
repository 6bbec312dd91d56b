"""A real browser for the dashboard tests: Playwright driving Debian's Chromium (Playwright's
own browser download cannot work here), presenting a person's client certificate to nginx."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pki import Issued
from unavailable import unavailable


def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        unavailable("needs Debian's chromium (scripts/tools.sh installs it)")
    return found


@contextmanager
def pages_for(origin: str) -> Iterator[Callable[[Issued], Any]]:
    """A function making a new page whose TLS connections to ``origin`` present ``who``'s
    certificate (Playwright's ``client_certificates``)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])

        def page_of(who: Issued) -> Any:
            certificate = {"origin": origin, "certPath": str(who.cert_path),
                           "keyPath": str(who.key_path)}  # fmt: skip
            context = browser.new_context(
                ignore_https_errors=True, client_certificates=[certificate],
                viewport={"width": 1400, "height": 1000},
            )  # fmt: skip
            context.set_default_timeout(30000)
            return context.new_page()

        try:
            yield page_of
        finally:
            browser.close()
