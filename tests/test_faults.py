"""Faults against real processes: a worker killed mid-job, a worker told to stop, a job past its
timeout. Every accepted job still ends, exactly once.

The workers here serve their own pool (``faults``), so the module's worker never takes these
jobs and the test decides which process runs them.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import TestClient, build_slow, job_events, wait_for, wait_job
from redis import Redis
from stack import Stack, Worker

from contract.events import EventType

BULK = {"model": "heavy", "data": [[0.25] * 16] * 300}  # 150 chunks of 2 rows


@pytest.fixture(scope="module")
def faults_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("faults") / "models"
    build_slow(repo / "heavy")
    (repo / "heavy" / "config.toml").write_text(
        'pool = "faults"\nmax_batch_size = 2\ntimeout_s = 60\n'
    )
    build_slow(repo / "hasty")
    (repo / "hasty" / "config.toml").write_text(
        'pool = "faults"\nmax_batch_size = 2\ntimeout_s = 0.2\n'
    )
    return repo


@pytest.fixture
def start(transient: Stack, faults_repo: Path) -> Callable[[str], Worker]:
    """Start workers of pool ``faults``; each is stopped at the end of the test."""
    return lambda name: transient.worker(name, models=faults_repo, pool="faults")


def running(client: TestClient, job: str) -> bool:
    body = client.get(f"/v1/jobs/{job}").json()
    return body["status"] == "started" and (body["progress"] or {}).get("done", 0) >= 4


def test_a_worker_killed_mid_job_the_job_runs_again_and_ends_once(
    client: TestClient, redis: Redis, start: Callable[[str], Worker]
) -> None:
    victim = start("victim")
    wait_for(lambda: client.get("/v1/models/heavy").json().get("ready"), what="heavy ready")
    job = client.post("/v1/jobs", json=BULK).json()["id"]
    wait_for(lambda: running(client, job), what="the job running on the victim")
    assert client.get(f"/v1/jobs/{job}").json()["attempt"] == 1
    victim.process.send_signal(signal.SIGKILL)
    victim.process.wait(10)
    start("rescuer")
    # the rescuer gets it once the victim's heartbeat expires (1.5 s), not after arq's 70 s
    done = wait_job(client, job, {"succeeded", "failed", "canceled"}, timeout=30)
    assert done["status"] == "succeeded" and done["attempt"] == 2
    assert done["outputs_summary"][0]["shape"] == [300, 1024]  # stored once, fetched by URL
    events = job_events(redis, job)
    starts = [e.data["attempt"] for e in events if e.type is EventType.STARTED]
    assert starts == [1, 2]
    assert sum(e.terminal for e in events) == 1 and events[-1].type is EventType.SUCCEEDED
    after_restart = events[[e.type for e in events].index(EventType.STARTED, 2) :]
    done_rows = [e.data["done"] for e in after_restart if e.type is EventType.PROGRESS]
    assert done_rows == list(range(2, 301, 2))  # the second attempt reports from the start


def test_a_worker_told_to_stop_leaves_no_job_behind(
    client: TestClient, redis: Redis, start: Callable[[str], Worker]
) -> None:
    first = start("first")
    wait_for(lambda: client.get("/v1/models/heavy").json().get("ready"), what="heavy ready")
    job = client.post("/v1/jobs", json=BULK).json()["id"]
    wait_for(lambda: running(client, job), what="the job running")
    start("second")
    first.process.send_signal(signal.SIGTERM)
    assert first.process.wait(30) is not None  # it exits
    done = wait_job(client, job, {"succeeded", "failed", "canceled"}, timeout=30)
    assert done["status"] == "succeeded"  # finished by the first, or handed to the second
    assert sum(e.terminal for e in job_events(redis, job)) == 1


def test_a_job_past_its_timeout_fails_and_the_worker_keeps_serving(
    client: TestClient, start: Callable[[str], Worker]
) -> None:
    start("timer")
    wait_for(lambda: client.get("/v1/models/hasty").json().get("ready"), what="hasty ready")
    slow = client.post("/v1/jobs", json={"model": "hasty", "data": [[0.25] * 16] * 3000}).json()[
        "id"
    ]
    failed = wait_job(client, slow, {"succeeded", "failed", "canceled"})
    assert failed["status"] == "failed" and failed["error"] == "timed out after 0.2 s"
    quick = client.post(
        "/v1/jobs", json={"model": "heavy", "data": [[0.25] * 16]}, headers={"Prefer": "wait=20"}
    )
    assert quick.status_code == 200 and quick.json()["status"] == "succeeded"
