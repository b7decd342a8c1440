"""What a newcomer meets in a browser, in headless Chromium (tests/browser.py): the API docs
with no internet, a browser's EventSource that stops after a job's end, and the dashboard's
first paint and example rows."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
from browser import Dashboard, HubServer, chromium, open_dashboard, serve_hub, watched_page
from helpers import WorkerProcess
from playwright.sync_api import Browser, Route

from contract.settings import Settings


@pytest.fixture(scope="module")
def hub_server(
    settings: Settings, worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HubServer]:
    yield from serve_hub(settings, tmp_path_factory.mktemp("front"))


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def page(browser: Browser) -> Iterator[Dashboard]:
    with watched_page(browser) as watched:
        yield watched


@pytest.fixture
def dash(browser: Browser, hub_server: HubServer) -> Iterator[Dashboard]:
    yield from open_dashboard(browser, hub_server.url)


REDOCLY_BADGE = "https://cdn.redoc.ly/redoc/logo-mini.svg"


def block_the_network(page: Dashboard) -> list[str]:
    """Abort every request that leaves this machine's loopback; the list of those refused."""
    refused: list[str] = []

    def route(route: Route) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort()

    page.page.context.route("**/*", route)
    return refused


def test_the_api_docs_render_with_no_network(page: Dashboard, hub_server: HubServer) -> None:
    refused = block_the_network(page)
    page.page.goto(hub_server.url + "/docs")
    title = page.page.locator(".swagger-ui .information-container .title")
    title.wait_for()
    assert title.inner_text().startswith("inferhub")
    page.page.locator(".opblock-summary-path", has_text="/v1/jobs/{job_id}/events").first.wait_for()
    assert page.page.locator(".opblock").count() > 10
    page.page.goto(hub_server.url + "/redoc")
    heading = page.page.locator(".api-info h1")
    heading.wait_for()
    assert heading.inner_text().startswith("inferhub")
    assert page.page.get_by_text("Follow a job's events (SSE)").count() >= 1
    # everything came from the hub but ReDoc's "API docs by Redocly" badge, a picture it
    # always fetches from its own site and hides when it cannot
    assert refused == [REDOCLY_BADGE], refused
    assert page.errors == ["console: Failed to load resource: net::ERR_FAILED"], page.errors
    assert any(p.startswith("/static-offline-docs/") for p in page.requests), page.requests


def test_an_event_source_stops_after_the_terminal_event(
    page: Dashboard, hub_server: HubServer
) -> None:
    r = httpx.post(
        f"{hub_server.url}/v1/jobs",
        json={"model": "iris", "data": [[5.1, 3.5, 1.4, 0.2]]},
        headers={"Prefer": "wait=10"},
        timeout=20,
    )
    assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text
    events = r.json()["urls"]["events"]
    page.page.route("**/favicon.ico", lambda route: route.fulfill(status=204))
    page.page.goto(hub_server.url + "/healthz")  # any page of the hub's origin
    # the README's snippet: a listener per event type (every event is named: onmessage never fires)
    page.page.evaluate(
        """url => {
            window.seen = []; window.unnamed = 0;
            const source = new EventSource(url);
            for (const type of ["queued", "started", "progress", "succeeded", "failed", "canceled"])
                source.addEventListener(type, (e) => window.seen.push(JSON.parse(e.data).type));
            source.onmessage = () => { window.unnamed += 1; };
            window.source = source;
        }""",
        events,
    )
    # the stream closes after the terminal event; the browser reconnects with its
    # Last-Event-ID, gets 204 No Content, and stops for good (readyState CLOSED)
    page.page.wait_for_function("() => window.source.readyState === EventSource.CLOSED")
    assert page.page.evaluate("window.seen") == ["queued", "started", "succeeded"]
    assert page.page.evaluate("window.unnamed") == 0
    assert page.requests.count(events) == 2, page.requests
    assert page.errors == []
