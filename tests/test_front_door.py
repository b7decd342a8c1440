"""What a newcomer meets in a browser, in headless Chromium (tests/browser.py): the API docs
with no internet, a browser's EventSource that stops after a job's end, and the dashboard's
first paint and example rows."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import orjson
import pytest
from browser import ARTIFACTS, Dashboard, chromium, open_dashboard, watched_page
from helpers import wait_for
from playwright.sync_api import Browser, Route, WebSocketRoute
from stack import Hub, Stack


@pytest.fixture(scope="module")
def hub_server(stack: Stack) -> Hub:
    stack.first_worker(wait=False)  # the hub is ready once the worker is
    return stack.hub("front")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def page(browser: Browser) -> Iterator[Dashboard]:
    with watched_page(browser) as watched:
        yield watched


@pytest.fixture
def dash(browser: Browser, hub_server: Hub) -> Iterator[Dashboard]:
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


def test_the_api_docs_render_with_no_network(page: Dashboard, hub_server: Hub) -> None:
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


def test_an_event_source_stops_after_the_terminal_event(page: Dashboard, hub_server: Hub) -> None:
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


class HeldStats:
    """The page's WebSocket, passed through, but for the hub's stats messages, which wait
    until ``release()``: the page as it is before its first stats message."""

    def __init__(self, page: Dashboard) -> None:
        self.held: list[str | bytes] = []
        self.holding = True
        self.page: WebSocketRoute | None = None
        page.page.route_web_socket("**/v1/ws*", self.route)

    def route(self, page: WebSocketRoute) -> None:
        self.page = page
        page.connect_to_server().on_message(self.from_hub)

    def from_hub(self, message: str | bytes) -> None:
        assert self.page is not None
        if self.holding and isinstance(message, str) and orjson.loads(message)["type"] == "stats":
            self.held.append(message)
        else:
            self.page.send(message)

    def release(self) -> None:
        assert self.page is not None
        self.holding = False
        for message in self.held:
            self.page.send(message)


def test_the_first_paint_says_loading_until_the_first_stats_message(
    page: Dashboard, hub_server: Hub
) -> None:
    stats = HeldStats(page)
    page.page.goto(hub_server.url + "/")
    page.page.wait_for_selector("#conn[data-state=open]")
    page.page.wait_for_function("() => window.inferhub.hub.stats")  # it asked for them
    # Playwright runs the socket's handlers while the test calls into it: poll through the page
    wait_for(lambda: page.page.evaluate("true") and stats.held, what="a stats message held back")
    shown = page.page.locator
    for card in ("#workers", "#models", "#metrics"):
        assert shown(f"{card} .loading").is_visible(), card
    assert shown("#workers-empty").is_hidden() and shown("#models-empty").is_hidden()
    assert [shown(f"#stat-{s}").inner_text() for s in ("workers", "running", "waiting")] == [
        "…"
    ] * 3
    assert shown("#try-model").is_disabled()
    page.page.screenshot(path=str(ARTIFACTS / "dashboard-loading.png"))
    stats.release()
    page.page.wait_for_selector("#models-list li[data-model=iris]")
    for card in ("#workers", "#models", "#metrics"):
        assert shown(f"{card} .loading").is_hidden(), card
    assert int(shown("#stat-workers").inner_text()) >= 1
    assert shown("#try-model").is_enabled()
    assert page.errors == []


def test_try_fills_real_example_rows_under_feature_names(dash: Dashboard) -> None:
    page = dash.page
    page.select_option("#try-model", "iris")
    page.locator("#try-fields label", has_text="sepal length (cm)").wait_for()
    assert page.input_value("#f-input-0") == "5.1"  # the first example: a setosa of the test split
    options = page.locator("#try-example option").all_inner_texts()
    assert options[:3] == ["setosa (example 1)", "versicolor (example 2)", "virginica (example 3)"]
    assert options[-1] == "random values"
    for choice, answer in (("1", "versicolor"), ("2", "virginica"), ("0", "setosa")):
        page.select_option("#try-example", choice)
        page.click("#try-form button[type=submit]")
        page.wait_for_function(
            "answer => document.querySelector('#try-result .answer-value')?.textContent === answer",
            arg=answer,
        )
    assert dash.errors == []


def test_bulk_rows_come_from_the_examples_off_the_main_thread(dash: Dashboard) -> None:
    page = dash.page
    workers: list[str] = []
    page.on("worker", lambda worker: workers.append(urlsplit(worker.url).path))
    page.select_option("#try-model", "iris")
    assert "iris's 9 example rows" in page.inner_text("#bulk-source")
    page.fill("#bulk-rows", "18000")  # 72,000 output values: more than the page keeps
    page.click("#bulk-submit")
    page.wait_for_selector("#bulk-progress[data-status=succeeded]", timeout=60_000)
    summary = page.locator("#bulk-result")
    summary.locator(".outputs").wait_for()  # read back from GET /v1/jobs/{id}
    text = summary.inner_text()
    assert text.startswith("18000 rows in") and "rows/s" in text, text
    counts = "18000 rows: setosa \u00d7 6000, versicolor \u00d7 6000, virginica \u00d7 6000"
    assert counts in text, text
    assert workers == ["/static/js/bulk-worker.js"]
    assert dash.errors == []
