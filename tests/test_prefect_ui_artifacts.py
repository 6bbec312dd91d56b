"""The artifacts of a finished prompt request as an expert sees them: in the real Prefect UI of
the shared local stack (its server serves the UI), in Chromium at 1400 x 1000. Every
validation report shows its plots (images that loaded, not broken links), no table is cut off
at the right, and the request has its summary. Both UIs of Prefect 3 are looked at: the
default one (``/v2/...``) and the classic one (``/...``), which the dashboard links to.
Screenshots go to build/screenshots/ for people to look at."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from browser import chromium
from prefect_stack import CALIBRATION_NAMES, PromptRequest, Stack

pytestmark = [pytest.mark.stack, pytest.mark.usefixtures("in_stack")]

SCREENSHOTS = Path(__file__).resolve().parents[1] / "build" / "screenshots"
#: The UIs and where each shows an artifact.
UIS = {"v2": "/v2/artifacts/artifact/{id}", "v1": "/artifacts/artifact/{id}"}

#: What the page shows, measured in the browser: every image (loaded or not; the images of
#: CodeMirror in the v2 UI's hidden raw view have no source and show nothing), and every table
#: cell that ends to the right of the box holding its table or of the window.
MEASURE = """() => {
    const shown = Array.from(document.images).filter(i => i.getAttribute('src'));
    const images = shown.map(i => ({
        src: i.src.slice(0, 30), width: i.naturalWidth, complete: i.complete}));
    const cut = [];
    const tables = Array.from(document.querySelectorAll('table'));
    for (const table of tables) {
        const box = table.parentElement;
        const right = Math.min(window.innerWidth, box.getBoundingClientRect().right);
        if (box.scrollWidth > box.clientWidth + 1)
            cut.push(`a table ${box.scrollWidth} px wide in a box of ${box.clientWidth} px`);
        for (const cell of table.querySelectorAll('th, td')) {
            const end = cell.getBoundingClientRect().right;
            if (end > right + 1) cut.push(`cell "${cell.textContent}" ends at ${end} > ${right}`);
        }
    }
    const page = document.documentElement;
    if (page.scrollWidth > window.innerWidth)
        cut.push(`the page is ${page.scrollWidth} px wide in a window of ${window.innerWidth}`);
    return {images, cut, tables: tables.length, text: document.body.innerText};
}"""


def _settled(page: Any, plots: bool) -> dict[str, Any]:
    """:data:`MEASURE` once the page has settled: the UI shows the artifact, then renders it
    again as its flow run and task run arrive (the report's images gone for a moment), so it is
    measured until two looks half a second apart agree (and, for a report, show its plots)."""
    page.wait_for_load_state("networkidle")
    deadline = time.monotonic() + 30
    last: dict[str, Any] | None = None
    while True:
        seen: dict[str, Any] = page.evaluate(MEASURE)
        shown = any(i["src"].startswith("data:image/png") for i in seen["images"])
        if (seen == last and (shown or not plots)) or time.monotonic() > deadline:
            return seen
        last = seen
        page.wait_for_timeout(500)


def _latest_artifacts(request: int) -> dict[str, Any]:
    """The newest version of each artifact whose key names the request."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_=f"request-{request}-")),
            sort=ArtifactSort.CREATED_DESC,
        )
    latest: dict[str, Any] = {}
    for artifact in found:
        if artifact.key and re.fullmatch(rf"request-{request}-[a-z0-9-]+", artifact.key):
            latest.setdefault(artifact.key, artifact)
    return latest


def test_the_request_artifacts_read_well_in_the_prefect_ui(
    stack: Stack, prompt_request: PromptRequest
) -> None:
    from playwright.sync_api import sync_playwright

    request = prompt_request.request
    latest = _latest_artifacts(request)
    slugs = [name.lower() for name in CALIBRATION_NAMES]
    validations = [f"request-{request}-{slug}-validation" for slug in slugs]
    tables = [f"request-{request}-{slug}-constants" for slug in slugs]
    summary = f"request-{request}-summary"
    assert sorted(latest) == sorted([*validations, *tables, summary])
    heading = f"Request {request} · e1 bucket 1"
    for key in validations:
        assert re.fullmatch(
            rf"{heading} · \w+ · iteration \d+: validation passed", latest[key].description
        ), latest[key].description
        assert "data:image/png;base64," in latest[key].data
        assert "file://" not in latest[key].data
    with stack.db() as db:  # made by the request's process-request run
        assert str(latest[summary].flow_run_id) == db.request(request).flow_run_id

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            page.set_default_timeout(30000)
            for ui, path in UIS.items():
                for key in [*validations, *tables, summary]:
                    page.goto(stack.ui + path.format(id=latest[key].id))
                    if key in validations:  # the report, its plots inside it
                        page.locator("img[src^='data:image/png']").first.wait_for()
                    else:
                        page.locator("table td").first.wait_for()
                    seen = _settled(page, plots=key in validations)
                    page.screenshot(path=str(SCREENSHOTS / f"{ui}-{key}.png"), full_page=True)
                    where = f"{ui} {key}"
                    assert seen["cut"] == [], f"{where}: {seen['cut']}"
                    assert all(i["width"] > 0 for i in seen["images"]), f"{where}: {seen}"
                    plots = [i for i in seen["images"] if i["src"].startswith("data:image/png")]
                    text = seen["text"]
                    if key in validations:
                        assert plots, f"{where}: no plot"
                        assert f"{heading} · " in text and "validation passed" in text
                    else:
                        assert seen["tables"] >= 1, where
                        assert not re.search(r"\d\.\d{7}", text), f"{where}: raw floats"
                    if key == f"request-{request}-channelt0-constants":
                        assert "t0 [ns]" in text, text
                    if key == summary:
                        assert f"{heading}: DONE" in text, text
                        assert f"staging-prompt-{request}" in text and "UPLOADED" in text
            # the list a person starts from: the request's artifacts, found by its key
            page.goto(f"{stack.ui}/v2/artifacts")
            page.get_by_placeholder("Search artifacts").fill(f"request-{request}-")
            page.get_by_text(summary, exact=True).wait_for()
            page.screenshot(path=str(SCREENSHOTS / f"v2-request-{request}-artifacts.png"))
        finally:
            browser.close()
    print(f"{2 * len(latest)} artifact pages in {time.monotonic() - started:.1f} s")
