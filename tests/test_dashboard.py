"""The dashboard in a real browser: Debian's headless Chromium driven by Playwright (see
tests/browser.py), against a real hub (``inferhub serve`` on a free port), the module's worker
and Redis database. Everything live on the page comes from its WebSocket: job events, and the
hub's ``stats`` message for the models, queues and workers (the page polls no HTTP route).
Screenshots at 1280 and 390 px go to ``test-artifacts/``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from browser import (
    ARTIFACTS,
    Dashboard,
    chromium,
    open_dashboard,
    submit,
    wait_subscribed,
    watched_page,
)
from helpers import TestClient, wait_for
from playwright.sync_api import Browser, Page
from redis import Redis
from stack import Hub, Stack, Worker

from contract import keys
from hub.auth import new_key

# --- the fixtures: a hub, a browser, one page per test with its console watched -------------


@pytest.fixture(scope="module")
def hub_server(stack: Stack) -> Hub:
    """A hub process that a test may stop and start again on the same port."""
    stack.first_worker(wait=False)  # the hub is ready once the worker is
    return stack.hub("dashboard")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def dash(browser: Browser, hub_server: Hub) -> Iterator[Dashboard]:
    yield from open_dashboard(browser, hub_server.url)


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


def test_queues_workers_and_models_come_live_from_the_socket(
    dash: Dashboard, hub_server: Hub, redis: Redis, orphan_model: str
) -> None:
    page = dash.page
    page.wait_for_selector(f"#models-list li[data-model={orphan_model}][data-ready=false]")
    jobs = [submit(hub_server.url, orphan_model, [[5.1, 3.5, 1.4, 0.2]]) for _ in range(2)]

    def shows_the_queue() -> None:
        """The page shows the pool's queue as Redis holds it: no worker serves pool "nobody",
        so every job in its queue waits (queue depth: hub/metrics/cluster.py)."""
        depth = redis.zcard(keys.queue("nobody"))
        pool = page.locator(f'#queues li[data-pool=nobody][data-depth="{depth}"]')
        pool.wait_for()
        assert f"{depth} waiting" in pool.inner_text()
        assert pool.get_attribute("data-running") == "0"

    shows_the_queue()
    assert redis.zcard(keys.queue("nobody")) >= 2
    for job_id in jobs:  # and it follows, live
        r = httpx.post(f"{hub_server.url}/v1/jobs/{job_id}/cancel", timeout=10)
        assert r.status_code == 200, r.text
    shows_the_queue()
    polled = {"/v1/models", "/v1/workers", "/v1/queues"} & set(dash.requests)
    assert polled == set(), dash.requests
    assert dash.errors == []


def test_online_traffic_shows_beside_the_jobs(dash: Dashboard, hub_server: Hub) -> None:
    tensor = {"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}
    for _ in range(4):
        r = httpx.post(
            f"{hub_server.url}/v2/models/iris/infer", json={"inputs": [tensor]}, timeout=30
        )
        assert r.status_code == 200, r.text
    # the page shows this hub's online counters from its stats message (no job record exists)
    line = dash.page.locator("#online li[data-model=iris]")
    line.wait_for()
    dash.page.wait_for_function(
        "() => Number(document.querySelector('#online li[data-model=iris]').dataset.total) >= 4"
    )
    assert "req/s" in line.inner_text() and "mean batch" in line.inner_text()
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
    # 200 x 1024 floats are stored once and only summarised in the events: the detail shows
    # the summary, and fetches the whole outputs on asking
    dash.row(job_id).get_by_role("button", name=f"details of job {job_id}").click()
    dialog = page.locator("#detail")
    summary = dialog.locator(".tensors dt", has_text="FP32 [200, 1024]")
    summary.wait_for()
    assert "800.0 KiB" in summary.inner_text()
    with page.expect_download() as caught:
        dialog.locator("button[data-format=npz]").click()
    saved = caught.value.path()
    with np.load(saved) as archive:
        assert archive["y"].shape == (200, 1024)
    page.keyboard.press("Escape")
    dialog.wait_for(state="hidden")
    assert dash.errors == []


def test_job_submitted_over_http_appears_live_and_succeeds(
    dash: Dashboard, hub_server: Hub
) -> None:
    page = dash.page
    job_id = submit(hub_server.url, "iris", [[5.1, 3.5, 1.4, 0.2]])
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
    after = submit(hub_server.url, "breast_cancer", [[1.0] * 30])
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
        dash.wait_status(submit(hub_server.url, "iris", data), "succeeded")
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
    assert httpx.get(f"{server.url}/v1/models", timeout=5).status_code == 401
    with watched_page(browser) as dash:
        page = dash.page
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
