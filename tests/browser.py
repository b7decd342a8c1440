"""Debian's headless Chromium driven by Playwright against a real hub (``inferhub serve`` on a
free port, started by the module's stack: tests/stack.py), for the browser tests: the pieces
their fixtures are made of.

Playwright's own browser download does not work here; the tests use ``/usr/bin/chromium``
(``apt-get install chromium``). Screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
from helpers import ROOT
from playwright.sync_api import Browser, ConsoleMessage, Page, Request, sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "test-artifacts"
WAIT_MS = 15_000


def submit(url: str, model: str, data: list[list[float]]) -> str:
    """POST a job to the hub at ``url``; its id."""
    r = httpx.post(f"{url}/v1/jobs", json={"model": model, "data": data}, timeout=10)
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


@contextmanager
def chromium() -> Iterator[Browser]:
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield launched
        finally:
            launched.close()


# --- one page, with its console watched ------------------------------------------------------


@dataclass
class Dashboard:
    page: Page
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)  # the paths of the page's HTTP requests

    def console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text}")

    def request(self, request: Request) -> None:
        self.requests.append(urlsplit(request.url).path)

    def row(self, job_id: str) -> Any:
        return self.page.locator(f'#jobs-body tr[data-job="{job_id}"]')

    def wait_status(self, job_id: str, status: str) -> None:
        self.page.wait_for_selector(f'#jobs-body tr[data-job="{job_id}"][data-status="{status}"]')

    def job(self, job_id: str) -> Any:
        """The job as the page's store holds it (events as their types)."""
        return self.page.evaluate(
            """id => { const j = window.inferhub.store.get(id);
                       return j && {status: j.status, events: j.events.map(e => e.type)}; }""",
            job_id,
        )


@contextmanager
def watched_page(browser: Browser) -> Iterator[Dashboard]:
    """A fresh page at desktop size whose console errors and requests are recorded."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    dashboard = Dashboard(page)
    page.on("console", dashboard.console)
    page.on("pageerror", lambda exc: dashboard.errors.append(f"pageerror: {exc}"))
    page.on("request", dashboard.request)
    try:
        yield dashboard
    finally:
        context.close()


def open_dashboard(browser: Browser, url: str) -> Iterator[Dashboard]:
    """The dashboard, connected and showing the models."""
    with watched_page(browser) as dashboard:
        dashboard.page.goto(url + "/")
        dashboard.page.wait_for_selector("#conn[data-state=open]")
        dashboard.page.wait_for_selector("#models-list li[data-model=digits]")
        wait_subscribed(dashboard.page)
        yield dashboard


def wait_subscribed(page: Page) -> None:
    """Until the hub has accepted the page's live subscriptions to the models: a job submitted
    before then may have published its first events to nobody (the page then shows it from
    a later event on)."""
    page.wait_for_function(
        "() => { const hub = window.inferhub.hub;"
        " return hub.models.has('iris') && hub.pending.size === 0; }"
    )
