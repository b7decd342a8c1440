"""The handoff (contract/lua/arq.lua's hand_off, workers/loop.py) across a real Redis and real
worker processes: an idle worker parks, the hub hands it a batch or a job claimed on its behalf
(no wake-up, no claim), and what goes wrong on the way (the worker killed or stopping before it
reads the handoff) leaves no batch behind.

The lane runs in the test's event loop (as in tests/test_online.py); each test has a pool of
its own (a copy of the digits model served by it), so that its workers park alone.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from helpers import ROOT
from redis import Redis
from stack import Stack, Worker

from contract import keys
from contract.channels import Subscriber, publish
from contract.connection import connect, database
from contract.errors import InferhubError
from contract.tensors import pack_tensor, unpack_tensor
from hub.catalogue import Catalogue
from hub.fanout import Fanout
from hub.online import OnlineLane

TOPOLOGIES = ("single", "cluster")

POOLS = ("hand-answered", "hand-killed", "hand-stopped", "hand-jobs")
"""One pool per test, each serving a copy of the digits model named as the pool."""

DIGITS = ROOT / "models" / "digits"


@pytest.fixture(scope="module")
def pool_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("handoff") / "models"
    config = (DIGITS / "config.toml").read_text().replace('pool = "default"', "pool = {!r}")
    assert "{!r}" in config
    for pool in POOLS:
        shutil.copytree(DIGITS, root / pool)
        (root / pool / "config.toml").write_text(config.replace("{!r}", f'"{pool}"'))
    return root


@pytest.fixture
async def lane(redis_url: str) -> AsyncIterator[OnlineLane]:
    redis = connect(redis_url)
    online = OnlineLane(redis, max_rows_per_pool=10_000)
    fanout = Fanout(redis_url)
    fanout.listen(online.reply_channel, online.on_reply)
    await fanout.start()
    try:
        yield online
    finally:
        await online.close()
        await fanout.stop()
        await redis.aclose()


def rows(seed: int) -> dict[str, np.ndarray]:
    return {"input": np.random.default_rng(seed).uniform(0, 16, (2, 64)).astype(np.float32)}


async def infer(
    lane: OnlineLane, pool: str, feed: dict[str, np.ndarray], timeout_s: float = 30
) -> dict[str, np.ndarray]:
    """Run ``feed`` on the pool's model through the lane, as the V2 route does."""
    catalogue = Catalogue(lane.redis)
    entry, version = await catalogue.model(pool)
    packed = await lane.infer(
        entry,
        version,
        [pack_tensor(n, a) for n, a in feed.items()],
        rows=2,
        outputs=None,
        priority=0,
        timeout_s=timeout_s,
        workers=len(await catalogue.serving(pool)),
    )
    return {p["name"]: unpack_tensor(p) for p in packed}


def assert_digits(answer: dict[str, np.ndarray], feed: dict[str, np.ndarray]) -> None:
    session = ort.InferenceSession(str(DIGITS / "1" / "model.onnx"))
    for output, expected in zip(session.get_outputs(), session.run(None, feed), strict=True):
        assert np.array_equal(answer[output.name], expected), output.name


def start(transient: Stack, models: Path, pool: str, name: str) -> tuple[Worker, str]:
    """A worker process of ``pool`` (heartbeat 1 s: its lease outlives a SIGSTOP by up to
    3 s), and its id, once it heartbeats."""
    worker = transient.worker(name, models=models, pool=pool, heartbeat_s=1.0)
    return worker, worker.wait_registered(transient.redis)["id"]


def holders(redis: Redis, pool: str) -> list[str]:
    """The ids of the workers holding a job of the pool (its in-progress keys' values)."""
    found = redis.scan_iter(match=keys.in_progress_prefix(pool) + "*")
    return [v.decode() for v in (redis.get(key) for key in list(found)) if v is not None]


def gathering(lane: OnlineLane) -> int:
    """The requests waiting in the lane for a batch in flight to come back."""
    return sum(len(line.pending) for line in lane._lines.values())


async def until(condition: Callable[[], object], what: str) -> None:
    """Wait (30 s at most) for state in Redis, which signals nothing when it changes."""
    try:
        async with asyncio.timeout(30):
            while not condition():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    except TimeoutError:
        pytest.fail(f"timed out waiting for {what}")


@asynccontextmanager
async def wake_channel(redis_url: str, pool: str) -> AsyncIterator[Callable[[], object]]:
    """Subscribed to the pool's wake channel; yields a check that nothing was published on
    it so far (a marker published now is the first message heard)."""
    client = connect(redis_url)
    channel = keys.wake(pool, database(client))
    async with Subscriber(client) as subscriber:
        await subscriber.subscribe(channel)

        async def first_heard() -> bytes:
            await publish(client, channel, "marker")
            async with asyncio.timeout(10):
                return (await subscriber.get())[1]

        yield first_heard
    await client.aclose()


async def test_a_batch_handed_to_a_parked_worker_is_answered(
    transient: Stack, pool_models: Path, redis: Redis, redis_url: str, lane: OnlineLane
) -> None:
    """Each request's batch goes to the parked worker, which parks again once it ends: no
    wake-up is ever published."""
    pool = "hand-answered"
    _, worker_id = await asyncio.to_thread(start, transient, pool_models, pool, "worker")
    parked = keys.parked(pool)
    async with wake_channel(redis_url, pool) as first_heard:
        for seed in range(3):
            await until(lambda: redis.hexists(parked, worker_id), "the worker to park")
            feed = rows(seed)
            assert_digits(await infer(lane, pool, feed), feed)
        assert await first_heard() == b"marker"
    await until(lambda: redis.hexists(parked, worker_id), "the worker to park again")
    assert not holders(redis, pool)


async def test_a_job_created_for_a_parked_worker_is_handed_to_it(
    transient: Stack, pool_models: Path, redis: Redis, redis_url: str
) -> None:
    """A durable job goes to the parked worker as a batch does (create.lua), runs, and the
    worker parks again: no wake-up is ever published."""
    pool = "hand-jobs"
    _, worker_id = await asyncio.to_thread(start, transient, pool_models, pool, "worker")
    hub = await asyncio.to_thread(transient.hub, "hub")
    parked = keys.parked(pool)
    async with (
        wake_channel(redis_url, pool) as first_heard,
        httpx.AsyncClient(base_url=hub.url, timeout=30) as http,
    ):
        for seed in range(3):
            await until(lambda: redis.hexists(parked, worker_id), "the worker to park")
            feed = rows(seed)
            job = {"model": pool, "data": feed["input"].tolist()}
            done = await http.post("/v1/jobs", json=job, headers={"Prefer": "wait=20"})
            assert done.status_code == 200 and done.json()["status"] == "succeeded", done.text
            assert done.json()["attempt"] == 1
        assert await first_heard() == b"marker"
    await until(lambda: redis.hexists(parked, worker_id), "the worker to park again")
    assert not holders(redis, pool)


async def test_a_parked_worker_killed_before_it_reads_a_handoff(
    transient: Stack, pool_models: Path, redis: Redis, lane: OnlineLane
) -> None:
    """Frozen, then killed, with a batch handed to it: the batch runs on another worker once
    the dead one's lease lapses (its reaper), while its request's deadline allows; a request
    whose deadline passes meanwhile gets 503. None hangs."""
    pool = "hand-killed"
    victim, victim_id = await asyncio.to_thread(start, transient, pool_models, pool, "victim")
    await until(lambda: redis.hexists(keys.parked(pool), victim_id), "the victim to park")
    os.kill(victim.pid, signal.SIGSTOP)  # still subscribed, and its lease lives for a while
    feed = rows(1)
    handed = asyncio.ensure_future(infer(lane, pool, feed, timeout_s=30))
    await until(lambda: holders(redis, pool) == [victim_id], "the handoff to the victim")
    late = asyncio.ensure_future(infer(lane, pool, rows(2), timeout_s=0.5))
    await until(lambda: gathering(lane) == 1, "the second request to gather behind the first")
    os.kill(victim.pid, signal.SIGKILL)
    await asyncio.to_thread(victim.process.wait)
    await asyncio.to_thread(start, transient, pool_models, pool, "rescuer")
    assert_digits(await handed, feed)
    with pytest.raises(InferhubError) as refused:
        await late
    assert refused.value.status == 503, refused.value


async def test_a_stopping_worker_unparks_and_gives_back_an_unread_handoff(
    transient: Stack, pool_models: Path, redis: Redis, lane: OnlineLane
) -> None:
    """SIGTERM with a handoff unread: the worker leaves the parked set and holds nothing once
    it exited (whether it ran the batch before the signal was handled, or handed it back);
    the batch is answered."""
    pool = "hand-stopped"
    worker, worker_id = await asyncio.to_thread(start, transient, pool_models, pool, "stopping")
    await until(lambda: redis.hexists(keys.parked(pool), worker_id), "the worker to park")
    os.kill(worker.pid, signal.SIGSTOP)
    feed = rows(3)
    handed = asyncio.ensure_future(infer(lane, pool, feed, timeout_s=30))
    await until(lambda: holders(redis, pool) == [worker_id], "the handoff to the worker")
    os.kill(worker.pid, signal.SIGTERM)
    os.kill(worker.pid, signal.SIGCONT)
    assert await asyncio.to_thread(worker.process.wait, 30) == 0, worker.log_text()
    assert not redis.hexists(keys.parked(pool), worker_id)
    assert worker_id not in holders(redis, pool)
    await asyncio.to_thread(start, transient, pool_models, pool, "next")
    assert_digits(await handed, feed)
