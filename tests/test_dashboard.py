"""The dashboard in a real browser: Debian's headless Chromium driven by Playwright, against a
real hub (``inferhub serve`` on a free port), the module's worker and Redis database.

Playwright's own browser download does not work here; the tests use ``/usr/bin/chromium``
(``apt-get install chromium``). Screenshots at 1280 and 390 px go to ``test-artifacts/``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import ROOT, TestClient, wait_for
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright
from redis import Redis
from stack import Hub, Stack, Worker

from hub.auth import new_key

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


def submit(hub: Hub, model: str, data: list[list[float]]) -> str:
    r = httpx.post(f"{hub.url}/v1/jobs", json={"model": model, "data": data}, timeout=10)
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


@pytest.fixture(scope="module")
def hub_server(stack: Stack) -> Hub:
    """A hub process that a test may stop and start again on the same port."""
    stack.first_worker(wait=False)  # the hub is ready once the worker is
    return stack.hub("dashboard")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


# --- one page per test, with its console watched --------------------------------------------


@dataclass
class Dashboard:
    page: Page
    errors: list[str] = field(default_factory=list)

    def console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text}")

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


@pytest.fixture
def dash(browser: Browser, hub_server: Hub) -> Iterator[Dashboard]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    dashboard = Dashboard(page)
    page.on("console", dashboard.console)
    page.on("pageerror", lambda exc: dashboard.errors.append(f"pageerror: {exc}"))
    page.goto(hub_server.url + "/")
    page.wait_for_selector("#conn[data-state=open]")
    page.wait_for_selector("#models-list li[data-model=digits]")
    wait_subscribed(page)
    try:
        yield dashboard
    finally:
        context.close()


def wait_subscribed(page: Page) -> None:
    """Until the hub has accepted the page's live subscriptions to the models: a job submitted
    before then may have published its first events to nobody (the page then shows it from
    a later event on)."""
    page.wait_for_function(
        "() => { const hub = window.inferhub.hub;"
        " return hub.models.has('iris') && hub.pending.size === 0; }"
    )


def circle(n: int = 48, rx: float = 0.22, ry: float = 0.35) -> list[tuple[float, float]]:
    return [
        (0.5 + rx * math.sin(2 * math.pi * i / n), 0.5 - ry * math.cos(2 * math.pi * i / n))
        for i in range(n + 1)
    ]


def draw(page: Page, stroke: list[tuple[float, float]]) -> None:
    """One stroke with the mouse, in coordinates 0..1 of the drawing canvas."""
    box = page.locator("#digit-canvas").bounding_box()
    assert box is not None

    def at(x: float, y: float) -> tuple[float, float]:
        return box["x"] + x * box["width"], box["y"] + y * box["height"]

    page.mouse.move(*at(*stroke[0]))
    page.mouse.down()
    for point in stroke[1:]:  # the page joins the points it gets with straight lines
        page.mouse.move(*at(*point))
    page.mouse.up()


def classify_drawing(page: Page, stroke: list[tuple[float, float]]) -> str:
    page.click("#digit-clear")
    draw(page, stroke)
    page.wait_for_selector("#digit-result[data-state=done]")
    return page.inner_text("#digit-answer").strip()


def record_progress(page: Page, selector: str) -> None:
    """Record every aria-valuenow the bar shows into window.recorded."""
    page.evaluate(
        """sel => { window.recorded = [];
            const bar = document.querySelector(sel);
            new MutationObserver(() => {
                const v = bar.getAttribute('aria-valuenow');
                if (v !== null && window.recorded.at(-1) !== Number(v)) window.recorded.push(Number(v));
            }).observe(bar, {attributes: true, attributeFilter: ['aria-valuenow']}); }""",
        selector,
    )


def bulk(page: Page, model: str, rows: int) -> str:
    """Submit ``rows`` random rows from the page's bulk form; the job id once accepted."""
    page.select_option("#try-model", model)
    page.fill("#bulk-rows", str(rows))
    page.click("#bulk-submit")
    page.wait_for_selector("#bulk-progress[data-job]")
    return str(page.get_attribute("#bulk-progress", "data-job"))


# --- the tests ----------------------------------------------------------------------------


def test_page_loads_and_lists_the_models_and_the_live_worker(
    dash: Dashboard, worker: Worker, redis: Redis
) -> None:
    page = dash.page
    for model in ("digits", "iris", "breast_cancer"):
        card = page.locator(f"#models-list li[data-model={model}]")
        assert card.get_attribute("data-ready") == "true"
        assert "ready" in card.inner_text()
    assert "input FP32 [-1, 64]" in page.inner_text("#models-list li[data-model=digits]")
    record = worker.record(redis)
    assert record is not None
    row = page.locator(f'#workers-body tr[data-worker="{record["id"]}"]')
    row.wait_for()
    assert row.get_attribute("data-alive") == "true"
    assert "default" in row.inner_text() and "digits" in row.inner_text()
    page.wait_for_selector("#queues li[data-pool=default]")
    assert page.inner_text("#stat-workers") != "0"
    assert dash.errors == []


def test_drawing_a_digit_on_the_canvas_classifies_it(dash: Dashboard) -> None:
    page = dash.page
    assert classify_drawing(page, [(0.5, 0.15), (0.5, 0.85)]) == "1"
    job_id = page.get_attribute("#digit-result", "data-job")
    assert job_id
    dash.wait_status(job_id, "succeeded")
    assert classify_drawing(page, circle()) == "0"
    chosen = page.locator("#digit-probs li.chosen")
    assert chosen.get_attribute("data-class") == "0"
    assert page.locator("#digit-probs li").count() == 10
    assert dash.errors == []


def test_bulk_job_from_the_page_shows_its_progress_to_done(dash: Dashboard) -> None:
    page = dash.page
    record_progress(page, "#bulk-bar")
    job_id = bulk(page, "slow", 200)  # slow: max_batch_size 2 -> 100 progress events
    page.wait_for_selector("#bulk-progress[data-status=succeeded]")
    seen = page.evaluate("window.recorded")
    assert seen[-1] == 100
    assert seen == sorted(seen), seen
    assert len([v for v in seen if 0 < v < 100]) >= 3, seen
    dash.wait_status(job_id, "succeeded")
    assert dash.row(job_id).locator("[role=progressbar]").get_attribute("aria-valuenow") == "100"
    assert "200/200" in dash.row(job_id).inner_text()
    assert dash.errors == []


def test_job_submitted_over_http_appears_live_and_succeeds(
    dash: Dashboard, hub_server: Hub
) -> None:
    page = dash.page
    job_id = submit(hub_server, "iris", [[5.1, 3.5, 1.4, 0.2]])
    dash.wait_status(job_id, "succeeded")
    assert dash.job(job_id)["events"] == ["queued", "started", "succeeded"]
    dash.row(job_id).get_by_role("button", name=f"details of job {job_id}").click()
    dialog = page.locator("#detail")
    dialog.wait_for()
    dialog.locator(".answer-value").wait_for()
    assert dialog.locator(".answer-value").inner_text() == "setosa"
    assert dialog.locator(".timeline li").count() == 3
    inputs = dialog.locator(".tensors dt", has_text="input")  # from GET /v1/jobs/{id}
    inputs.wait_for()
    assert inputs.inner_text() == "input FP32 [1, 4]"
    page.keyboard.press("Escape")
    dialog.wait_for(state="hidden")
    assert dash.errors == []


def test_cancel_from_the_page_cancels_a_running_bulk_job(dash: Dashboard, hub_server: Hub) -> None:
    page = dash.page
    job_id = bulk(page, "slow", 6000)  # about 6 s of work in 3000 chunks
    page.wait_for_function(
        "() => Number(document.querySelector('#bulk-bar').getAttribute('aria-valuenow')) > 0"
    )
    dash.row(job_id).get_by_role("button", name=f"cancel job {job_id}").click()
    dash.wait_status(job_id, "canceled")
    job = httpx.get(f"{hub_server.url}/v1/jobs/{job_id}", timeout=5).json()
    assert job["status"] == "canceled"
    assert 0 < job["progress"]["done"] < 6000
    assert dash.row(job_id).get_by_role("button", name=f"cancel job {job_id}").is_hidden()
    assert dash.errors == []


def test_page_reconnects_after_a_hub_restart_and_replays_what_it_missed(
    dash: Dashboard, hub_server: Hub, client: TestClient
) -> None:
    page = dash.page
    hub_server.stop()
    page.wait_for_selector("#conn[data-state=reconnecting]")
    # while the page's hub is down, another hub on the same Redis takes a job
    r = client.post("/v1/jobs", json={"model": "iris", "data": [[6.7, 3.0, 5.2, 2.3]]})
    assert r.status_code == 202, r.text
    missed = r.json()["id"]
    wait_for(
        lambda: client.get(f"/v1/jobs/{missed}").json()["status"] == "succeeded",
        what="the job submitted during the outage to finish",
    )
    hub_server.restart()
    page.wait_for_selector("#conn[data-state=open]")
    assert "reconnected" in page.inner_text("#conn")
    # resumed from the last event id: the job's events came on the socket, not just its record
    dash.wait_status(missed, "succeeded")
    wait_for(lambda: dash.job(missed)["events"] == ["queued", "started", "succeeded"])
    # and it keeps updating live
    after = submit(hub_server, "breast_cancer", [[1.0] * 30])
    dash.wait_status(after, "succeeded")
    assert dash.job(after)["events"] == ["queued", "started", "succeeded"]
    # the only console errors allowed are Chromium's own reports of the refused connections
    unexpected = [
        e for e in dash.errors if "WebSocket connection to" not in e and "net::ERR_" not in e
    ]
    assert unexpected == []


def test_screenshots_at_desktop_and_phone_widths(dash: Dashboard, hub_server: Hub) -> None:
    page = dash.page
    for data in ([[5.1, 3.5, 1.4, 0.2]], [[6.0, 2.9, 4.5, 1.5]], [[6.7, 3.0, 5.2, 2.3]]):
        dash.wait_status(submit(hub_server, "iris", data), "succeeded")
    assert classify_drawing(page, circle()) == "0"
    page.wait_for_function("() => document.querySelector('#stat-rate').textContent !== '0.00'")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_function("() => document.documentElement.scrollWidth <= window.innerWidth")
    page.screenshot(path=str(ARTIFACTS / "dashboard-mobile.png"), full_page=True)
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
    assert dash.errors == []


def test_the_page_and_its_files_are_served(hub_server: Hub) -> None:
    index = httpx.get(hub_server.url + "/", timeout=5)
    assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
    assert 'src="static/js/main.js"' in index.text
    for path in ("static/app.css", "static/js/main.js", "static/js/hub.js"):
        assert httpx.get(f"{hub_server.url}/{path}", timeout=5).status_code == 200
    assert httpx.get(f"{hub_server.url}/static/nothing.js", timeout=5).status_code == 404
    queues = httpx.get(f"{hub_server.url}/v1/queues", timeout=5).json()
    default = next(p for p in queues["pools"] if p["pool"] == "default")
    assert default["workers"] >= 1 and "digits" in default["models"] and default["depth"] >= 0


def test_a_hub_with_keys_asks_for_one_once_and_connects_with_a_ticket(
    browser: Browser, worker: Worker, redis: Redis, transient: Stack, tmp_path: Path
) -> None:
    keys_file = tmp_path / "keys.toml"
    key = new_key(keys_file, "ops", ["admin"])
    wrong = "ih_00000000_not-a-key-of-this-hub"
    server = transient.hub("keyed", api_keys_file=keys_file)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(WAIT_MS)
    try:
        assert httpx.get(f"{server.url}/v1/models", timeout=5).status_code == 401
        page = context.new_page()
        dash = Dashboard(page)
        page.on("console", dash.console)
        page.on("pageerror", lambda exc: dash.errors.append(f"pageerror: {exc}"))
        page.goto(server.url + "/")
        dialog = page.get_by_role("dialog", name="This hub asks for an API key")
        dialog.wait_for()
        assert "inferhub keys add --tenant NAME --scope admin" in dialog.inner_text()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard-key.png"))
        # a wrong key: the hub's message, and the dialog asks again
        dialog.get_by_label("API key").fill(wrong)
        dialog.get_by_role("button", name="Use this key").click()
        error = dialog.get_by_role("alert")
        error.wait_for()
        assert error.inner_text() == "the API key is not valid"
        assert dialog.is_visible() and page.get_attribute("#key-input", "aria-invalid")
        page.screenshot(path=str(ARTIFACTS / "dashboard-key-wrong.png"))
        # the right key: the dialog goes, the socket connects with a ticket, the page fills
        dialog.get_by_label("API key").fill(key)
        dialog.get_by_role("button", name="Use this key").click()
        dialog.wait_for(state="hidden")
        page.wait_for_selector("#conn[data-state=open]")
        page.wait_for_selector("#models-list li[data-model=digits][data-ready=true]")
        wait_subscribed(page)
        record = worker.record(redis)
        assert record is not None
        row = page.locator(f'#workers-body tr[data-worker="{record["id"]}"]')
        row.wait_for()
        assert row.get_attribute("data-alive") == "true"
        assert page.evaluate("sessionStorage.getItem('inferhub.key')") == key
        # a job submitted over HTTP with the key comes live over the socket
        r = httpx.post(
            f"{server.url}/v1/jobs",
            json={"model": "iris", "data": [[5.1, 3.5, 1.4, 0.2]]},
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        )
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        dash.wait_status(job_id, "succeeded")
        assert dash.job(job_id)["events"] == ["queued", "started", "succeeded"]
        # asked once: a reload in the same tab connects with the stored key, no dialog
        page.reload()
        page.wait_for_selector("#conn[data-state=open]")
        page.wait_for_selector(f'#jobs-body tr[data-job="{job_id}"]')
        assert not dialog.is_visible()
        # only Chromium's reports of the two refused requests (no key, then the wrong one)
        unexpected = [e for e in dash.errors if "status of 401 (Unauthorized)" not in e]
        assert unexpected == []
        assert len(dash.errors) == 2, dash.errors
    finally:
        context.close()
