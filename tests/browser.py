"""Debian's headless Chromium driven by Playwright against a real hub (``python -m cli serve``
on a free port), for the browser tests: the pieces their fixtures are made of.

Playwright's own browser download does not work here; the tests use ``/usr/bin/chromium``
(``apt-get install chromium``). Screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import httpx
from helpers import ROOT, free_port, wait_for, worker_env
from playwright.sync_api import Browser, ConsoleMessage, Page, Request, sync_playwright

from cli.processes import stop
from contract.settings import Settings

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


# --- a hub that can be stopped and started again on the same port ---------------------------


@dataclass
class HubServer:
    port: int
    env: dict[str, str]
    log: IO[bytes]
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cli", "serve"],
            env=self.env,
            cwd=ROOT,
            start_new_session=True,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_for(self._ready, timeout=60, every=0.05, what=f"{self.url}/readyz")

    def _ready(self) -> bool:
        assert self.process is not None and self.process.poll() is None, "the hub exited"
        try:
            return httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            stop([self.process])
            self.process = None

    def submit(self, model: str, data: list[list[float]]) -> str:
        r = httpx.post(f"{self.url}/v1/jobs", json={"model": model, "data": data}, timeout=10)
        assert r.status_code == 202, r.text
        return str(r.json()["id"])


def serve_hub(settings: Settings, folder: Path, **env: str) -> Iterator[HubServer]:
    """A hub on the session's Redis (and so its worker), for as long as the generator runs."""
    port = free_port()
    with (folder / "hub.log").open("wb") as log:
        server = HubServer(port, worker_env(settings, INFERHUB_PORT=str(port), **env), log)
        server.start()
        try:
            yield server
        finally:
            server.stop()


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
        yield dashboard
