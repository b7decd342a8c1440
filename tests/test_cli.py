"""The command line, as a user runs it: ``inferhub submit`` against a running hub, and
``inferhub up`` bringing the whole stack up and, on Ctrl-C, down with no process left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
from helpers import ROOT, wait_for

from hub.processes import free_port, ready


def inferhub(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hub", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        cwd=ROOT,
    )


def test_submit_wait_prints_the_labelled_result(hub_url: str) -> None:
    done = inferhub(
        "submit",
        "iris",
        "--data",
        "[[5.1,3.5,1.4,0.2],[6.7,3.0,5.2,2.3]]",
        "--wait",
        "--url",
        hub_url,
    )
    assert done.returncode == 0, done.stderr
    assert "succeeded (2 rows)" in done.stdout
    assert "setosa (0)" in done.stdout and "virginica (2)" in done.stdout


def test_submit_follow_shows_progress_to_the_end(hub_url: str, tmp_path: Path) -> None:
    rows = tmp_path / "rows.json"
    rows.write_text(str([[0.5] * 16] * 20))  # slow: 2 rows a chunk, so 10 progress events
    done = inferhub("submit", "slow", "--input", str(rows), "--follow", "--url", hub_url)
    assert done.returncode == 0, done.stderr
    assert "succeeded" in done.stdout and "20/20" in done.stdout


def test_models_and_jobs_list_what_is_served_and_run(hub_url: str) -> None:
    models = inferhub("models", "--url", hub_url)
    assert models.returncode == 0 and "digits" in models.stdout and "FP32[-1, 64]" in models.stdout
    jobs = inferhub("jobs", "--url", hub_url, "--model", "iris")
    assert jobs.returncode == 0 and "iris" in jobs.stdout and "succeeded" in jobs.stdout


def test_errors_are_one_line_and_a_nonzero_exit(hub_url: str) -> None:
    unknown = inferhub("submit", "nope", "--data", "[[1]]", "--url", hub_url)
    assert unknown.returncode == 1 and "404 model_not_found" in unknown.stdout
    wrong = inferhub("submit", "iris", "--data", "[[1, 2]]", "--url", hub_url)
    assert wrong.returncode == 1 and "422 invalid_input" in wrong.stdout
    assert "Traceback" not in unknown.stdout + unknown.stderr + wrong.stdout + wrong.stderr
    away = inferhub("models", "--url", f"http://127.0.0.1:{free_port()}")
    assert away.returncode == 1 and "cannot reach the hub" in away.stdout


def _children(pid: int) -> set[int]:
    """Every descendant of ``pid``, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def test_up_serves_then_stops_everything_on_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERHUB_")}
    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen(
        [sys.executable, "-m", "hub", "up", "--port", str(port), "--models", str(ROOT / "models")],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            lambda: "inferhub is up" in (tmp_path / "up.log").read_text(),
            timeout=90,
            what="inferhub up to say it is up",
        )
        assert ready(url)
        children = _children(up.pid)
        assert len(children) >= 3  # Redis, a worker, the hub
        r = httpx.post(
            f"{url}/v1/jobs",
            json={"model": "digits", "data": [[0.0] * 64]},
            headers={"Prefer": "wait=10"},
            timeout=20,
        )
        assert r.status_code == 200 and r.json()["status"] == "succeeded"
        up.send_signal(signal.SIGINT)
        assert up.wait(30) == 0
        left = [
            p
            for p in children
            if Path(f"/proc/{p}").exists()
            and "zombie" not in (Path(f"/proc/{p}/status").read_text().lower())
        ]
        assert left == [], f"processes left behind: {left}"
    finally:
        if up.poll() is None:
            up.kill()
        log.close()
