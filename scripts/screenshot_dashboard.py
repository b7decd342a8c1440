"""Take the README's dashboard screenshots (docs/dashboard.png, docs/dashboard-mobile.png) from
what a new user sees: ``inferhub up`` with the example models of ``models/``, a digit drawn,
example rows tried, and a bulk job.

Needs the ``test`` extra (Playwright) and Debian's Chromium; run from the repository root::

    python scripts/screenshot_dashboard.py
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

import httpx
from playwright.sync_api import Page, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-sync"]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def draw_zero(page: Page) -> None:
    box = page.locator("#digit-canvas").bounding_box()
    assert box is not None
    points = [
        (0.5 + 0.22 * math.sin(2 * math.pi * i / 48), 0.5 - 0.35 * math.cos(2 * math.pi * i / 48))
        for i in range(49)
    ]
    page.mouse.move(box["x"] + points[0][0] * box["width"], box["y"] + points[0][1] * box["height"])
    page.mouse.down()
    for x, y in points[1:]:
        page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"], steps=4)
    page.mouse.up()
    page.wait_for_selector("#digit-result[data-state=done]")


def shoot(url: str) -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(30_000)
        page.goto(url + "/")
        page.wait_for_selector("#models-list li[data-model=iris][data-ready=true]")
        for model in ("iris", "breast_cancer", "digits"):  # a few jobs of each, for the charts
            for example in httpx.get(f"{url}/v1/models/{model}", timeout=10).json()["examples"]:
                row = example["inputs"]["input"]
                httpx.post(f"{url}/v1/jobs", json={"model": model, "data": [row]}, timeout=10)
                tensor = {"name": "input", "datatype": "FP32", "shape": [1, len(row)], "data": row}
                infer = f"{url}/v2/models/{model}/infer"  # and the online lane
                httpx.post(infer, json={"inputs": [tensor]}, timeout=10)
        draw_zero(page)
        page.select_option("#try-model", "iris")
        page.select_option("#try-example", "1")
        page.click("#try-form button[type=submit]")
        page.wait_for_selector("#try-result .answer-value")
        page.fill("#bulk-rows", "5000")
        page.click("#bulk-submit")
        page.wait_for_selector("#bulk-result .outputs")
        page.wait_for_function(
            "() => document.querySelector('#stat-p50').textContent !== '\\u2013'"
        )
        time.sleep(2.5)  # one more stats message, so that the figures are the latest
        page.screenshot(path=str(ROOT / "docs" / "dashboard.png"), full_page=True)
        page.set_viewport_size({"width": 390, "height": 844})
        time.sleep(0.5)  # the layout settles at the new width
        page.screenshot(path=str(ROOT / "docs" / "dashboard-mobile.png"), full_page=True)
        browser.close()


def said(log: IO[bytes]) -> bytes:
    log.seek(0)
    return log.read()


def main() -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERHUB_")}
    with tempfile.TemporaryFile() as log:
        up = subprocess.Popen(
            [sys.executable, "-m", "cli", "up", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while b"inferhub is up" not in said(log):
                if up.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"inferhub up did not come up:\n{said(log).decode()}")
                time.sleep(0.2)
            shoot(f"http://127.0.0.1:{port}")
        finally:
            up.send_signal(signal.SIGINT)
            up.wait(30)
    print("wrote docs/dashboard.png and docs/dashboard-mobile.png")


if __name__ == "__main__":
    main()
