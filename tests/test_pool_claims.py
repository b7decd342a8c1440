"""How the workers of one pool share its queue: each takes what the others do not hold, a dead
worker's claims go to the living at once, priority orders jobs (and online batches) without
delaying any, and the worker registry forgets workers gone for an hour.

The workers here serve their own pool (``claims``), so the module's worker never takes these
jobs and each test decides which processes run them. Figures are printed (``pytest -s``).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import pytest
from helpers import ROOT, TestClient, build_slow, wait_for, wait_job
from redis import Redis
from redis.client import PubSub
from stack import Stack, Worker

from contract import keys

POOL = "claims"
TERMINAL = {"succeeded", "failed", "canceled"}
QUICK = {"model": "quick", "data": [[5.1, 3.5, 1.4, 0.2]]}
LONG = {"model": "long", "data": [[0.25] * 16] * 20_000}  # 10,000 chunks: many seconds
LONG_TIMEOUT_S = 120  # arq's in-progress key then lives 130 s: far beyond every wait below


class Start(Protocol):
    def __call__(self, name: str, max_jobs: int = 64) -> Worker: ...


@pytest.fixture(scope="module")
def claims_repo(stack: Stack, redis: Redis, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Models of pool ``claims``, in the catalogue, with no worker of the pool running."""
    repo = tmp_path_factory.mktemp("claims") / "models"
    build_slow(repo / "long")
    (repo / "long" / "config.toml").write_text(
        f'pool = "{POOL}"\nmax_batch_size = 2\ntimeout_s = {LONG_TIMEOUT_S}\n'
    )
    shutil.copytree(ROOT / "models" / "iris" / "1", repo / "quick" / "1")
    (repo / "quick" / "config.toml").write_text(f'pool = "{POOL}"\n')
    registrar = stack.worker("registrar", models=repo, pool=POOL)
    wait_for(lambda: redis.hexists(keys.MODELS, "long"), what="the claims models catalogued")
    registrar.stop()
    return repo


@pytest.fixture
def start(transient: Stack, claims_repo: Path) -> Start:
    """Start workers of pool ``claims``; each is stopped at the end of the test."""

    def launch(name: str, max_jobs: int = 64) -> Worker:
        return transient.worker(name, models=claims_repo, pool=POOL, max_jobs=max_jobs)

    return launch


def submit(client: TestClient, body: dict, **extra: object) -> str:
    r = client.post("/v1/jobs", json={**body, **extra})
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def ran_on(redis: Redis, job_id: str) -> str:
    return (redis.hget(keys.job(job_id), "worker") or b"").decode()


@contextlib.contextmanager
def claims(redis: Redis, db: int) -> Iterator[PubSub]:
    """Redis's keyspace notifications of the pool's claims (the claim's SET of an in-progress
    key), subscribed before the block and on only inside it."""
    previous = redis.config_get("notify-keyspace-events")["notify-keyspace-events"]
    pubsub = redis.pubsub()
    pubsub.psubscribe(f"__keyspace@{db}__:{keys.in_progress_prefix(POOL)}*")
    assert pubsub.get_message(timeout=10)["type"] == "psubscribe"  # type: ignore[index]
    redis.config_set("notify-keyspace-events", "K$")  # string commands
    try:
        yield pubsub
    finally:
        pubsub.close()
        redis.config_set("notify-keyspace-events", previous)


def claimed(notice: dict) -> str:
    """The job a claim's notification names."""
    return str(notice["channel"].decode().rsplit(":", 1)[1])


def test_an_idle_worker_takes_the_jobs_a_busy_worker_cannot(
    client: TestClient, redis: Redis, start: Start
) -> None:
    busy = start("busy", max_jobs=2)
    longs = [submit(client, LONG) for _ in range(2)]
    for job in longs:  # the busy worker's room is full with them
        wait_job(client, job, {"started"})
        assert ran_on(redis, job) == busy.record(redis)["id"]  # type: ignore[index]
    idle = start("idle", max_jobs=2)
    began = time.monotonic()
    quick = [submit(client, QUICK) for _ in range(6)]
    done = [wait_job(client, job, TERMINAL, timeout=20) for job in quick]
    took = time.monotonic() - began
    assert [job["status"] for job in done] == ["succeeded"] * 6
    idle_id = idle.record(redis)["id"]  # type: ignore[index]
    assert {ran_on(redis, job) for job in quick} == {idle_id}
    # the busy worker is still on its long jobs: the idle one did not wait for them
    assert [client.get(f"/v1/jobs/{job}").json()["status"] for job in longs] == ["started"] * 2
    print(f"\nidle worker beside a busy one: 6 quick jobs done {took:.3f} s after submission")
    for job in longs:
        client.post(f"/v1/jobs/{job}/cancel")
        assert wait_job(client, job, TERMINAL)["status"] == "canceled"


def test_the_jobs_a_worker_claimed_run_on_another_at_once_when_it_is_killed(
    client: TestClient,
    redis: Redis,
    stack: Stack,
    transient: Stack,
    start: Start,
    claims_repo: Path,
) -> None:
    jobs = [submit(client, QUICK) for _ in range(200)]  # no worker of the pool runs yet
    with claims(redis, stack.db) as notices:
        victim = transient.worker("victim", wait=False, models=claims_repo, pool=POOL)
        try:
            # SIGKILL as soon as the victim's first claim lands, before it can start those jobs
            wait_for(lambda: notices.get_message(timeout=0.01), timeout=60, every=0, what="a claim")
            victim.process.send_signal(signal.SIGKILL)
            killed = time.monotonic()
        finally:
            victim.stop()  # reaps the killed process; stops it if no claim came
    held = [job for job in jobs if redis.exists(keys.in_progress_prefix(POOL) + job)]
    unstarted = [job for job in held if redis.hget(keys.job(job), "status") == b"queued"]
    assert unstarted, "the victim should have died holding jobs it had not started"
    start("rescuer")
    done = [wait_job(client, job, TERMINAL, timeout=20) for job in jobs]
    took = time.monotonic() - killed
    assert [job["status"] for job in done] == ["succeeded"] * len(jobs)
    print(
        f"\nworker killed holding {len(held)} of {len(jobs)} jobs ({len(unstarted)} unstarted):"
        f" all done {took:.3f} s after the kill (heartbeat expiry "
        f"{stack.settings.heartbeat_s * 3:g} s; arq's in-progress timeout {LONG_TIMEOUT_S + 10} s)"
    )


def test_a_low_priority_runs_at_once_on_an_idle_worker(
    client: TestClient, redis: Redis, start: Start
) -> None:
    start("idle")
    # the lowest priority was once a run-at time 100 s ahead: -5 took 6 s, -100 over 100 s
    for priority in (-5, -100):
        job = submit(client, QUICK, priority=priority)
        assert wait_job(client, job, TERMINAL, timeout=3)["status"] == "succeeded"
    # Triton's level 201 and beyond is the lowest; 3 s is the request's own deadline
    r = client.post(
        "/v2/models/quick/infer",
        json={
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1] * 4}],
            "parameters": {"priority": 201, "timeout": 3_000_000},
        },
    )
    assert r.status_code == 200, r.text


def test_a_higher_priority_runs_first_and_equal_ones_in_order(
    client: TestClient, redis: Redis, start: Start
) -> None:
    wanted = [("low1", -5), ("low2", -5), ("mid", 0), ("high1", 5), ("high2", 5)]
    jobs = {submit(client, QUICK, priority=p): name for name, p in wanted}  # none runs yet
    start("single", max_jobs=1)  # one job at a time, in queue order
    done = [wait_job(client, job, TERMINAL) for job in jobs]
    assert {job["status"] for job in done} == {"succeeded"}
    ran = [jobs[job["id"]] for job in sorted(done, key=lambda job: job["finished_at"])]
    assert ran == ["high1", "high2", "mid", "low1", "low2"]


def test_a_higher_priority_online_request_runs_first(
    client: TestClient, redis: Redis, stack: Stack, start: Start
) -> None:
    """The online lane's batches are queued by priority as jobs are: while the pool's one
    worker (one job at a time) runs a long job, a request of priority 5 sent after one of -5
    is queued ahead of it, and claimed first once the long job is canceled.

    The order is read where it is decided: Redis's keyspace notifications of the batches'
    in-progress keys, which the claim sets. The order in which the two client threads see
    their answers is not it: a thread may wake late."""
    start("single", max_jobs=1)
    long = submit(client, LONG)
    wait_job(client, long, {"started"})
    queue = keys.queue(POOL)

    def infer(priority: int) -> int:
        body = {**QUICK, "lane": "online", "priority": priority}
        return client.post("/v1/jobs", json=body).status_code

    with ThreadPoolExecutor(2) as pool:
        low = pool.submit(infer, -5)
        wait_for(lambda: redis.zcard(queue) == 2, what="the low request's batch queued")
        high = pool.submit(infer, 5)
        wait_for(lambda: redis.zcard(queue) == 3, what="the high request's batch queued")
        # arq keeps the long job in the queue while it runs; the batches are named in the
        # order the hub sent them (its id, then a count)
        batches = [m.decode() for m in redis.zrange(queue, 0, -1) if m.decode() != long]
        low_batch, high_batch = sorted(batches, key=lambda m: int(m.rsplit("-", 1)[1]))
        assert batches == [high_batch, low_batch]  # sent second, queued first
        assert not low.done() and not high.done()  # neither ran beside the long job
        with claims(redis, stack.db) as notices:
            r = client.post(f"/v1/jobs/{long}/cancel")
            assert r.status_code == 200, r.text
            assert [high.result(timeout=60), low.result(timeout=60)] == [200, 200]
            order = [claimed(n) for n in iter(lambda: notices.get_message(timeout=1), None)]
    assert [job for job in order if job in batches] == [high_batch, low_batch]


def test_the_worker_registry_forgets_workers_gone_for_an_hour(redis: Redis, worker: Worker) -> None:
    now = time.time()
    redis.zadd(keys.WORKERS, {"gone-2h": now - 7200, "gone-30m": now - 1800})
    try:
        # a live worker's next heartbeat prunes the registry
        wait_for(lambda: redis.zscore(keys.WORKERS, "gone-2h") is None, what="gone-2h pruned")
        assert redis.zscore(keys.WORKERS, "gone-30m") is not None  # /v1/workers still lists it
        assert redis.zscore(keys.WORKERS, worker.record(redis)["id"])  # type: ignore[index]
    finally:
        redis.zrem(keys.WORKERS, "gone-2h", "gone-30m")
