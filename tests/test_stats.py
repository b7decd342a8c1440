"""The WebSocket's ``stats`` message over a real socket, against what was queued: a hub process
(``inferhub serve``, with API keys) on the module's Redis database (tests/stack.py), so that
every queued job is this module's; a worker of the default pool; the model ``orphan``, whose
pool has no worker, so that its jobs wait.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
import websockets
from helpers import wait_for
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis
from stack import Stacks

from contract import keys
from hub.auth import new_key
from hub.metrics import cluster, stats

READ_S = 30  # the longest wait for one frame, or for the frame a test looks for


@dataclass
class Stack:
    url: str
    redis: Redis
    admin: str  # an admin key
    tenant: str  # a tenant's key (read, submit)

    def http(self, method: str, path: str, key: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"}
        return httpx.request(method, self.url + path, headers=headers, timeout=30, **kwargs)

    def submit(self, model: str, rows: int, width: int) -> dict[str, Any]:
        body = {"model": model, "data": [[0.5] * width] * rows}
        r = self.http("POST", "/v1/jobs", self.tenant, json=body)
        assert r.status_code == 202, r.text
        return dict(r.json())

    def cancel(self, job_id: str) -> None:
        r = self.http("POST", f"/v1/jobs/{job_id}/cancel", self.tenant)
        assert r.status_code == 200, r.text

    def socket(self, key: str) -> Any:
        url = self.url.replace("http://", "ws://") + "/v1/ws"
        return websockets.connect(url, additional_headers={"Authorization": f"Bearer {key}"})


@pytest.fixture(scope="module")
def stack(stacks: Stacks) -> Iterator[Stack]:
    with stacks("stats", stats_interval_s=0.1) as made:
        keys_file = made.folder / "keys.toml"
        admin, tenant = (
            new_key(keys_file, "ops", ["admin"]),
            new_key(keys_file, "acme", ["submit", "read"]),
        )
        # a worker of pool "nobody" writes orphan's catalogue entry, then leaves for good
        nobody = made.worker("nobody", pool="nobody")
        wait_for(lambda: made.redis.hexists(keys.MODELS, "orphan"), what="orphan in the catalogue")
        nobody.stop()
        made.worker(wait=False)  # the hub is ready once it is
        hub = made.hub(api_keys_file=keys_file)
        yield Stack(hub.url, made.redis, admin, tenant)


# --- reading the socket -------------------------------------------------------------------------


async def recv(ws: Any) -> dict[str, Any]:
    return dict(orjson.loads(await asyncio.wait_for(ws.recv(), READ_S)))


async def send(ws: Any, message: dict[str, Any]) -> None:
    await ws.send(orjson.dumps(message).decode())


async def ask_stats(ws: Any, on: bool = True) -> dict[str, Any]:
    """Start (or stop) the stats message; the ``accepted`` reply (frames before it are skipped)."""
    await send(ws, {"type": "stats", "ref": "s", "on": on})
    while True:
        message = await recv(ws)
        if message["type"] != "stats":
            assert message == {
                "type": "accepted",
                "ref": "s",
                "stats": {"on": on, "interval_s": 0.1},
            }
            return message


async def frame_where(ws: Any, wanted: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The first stats frame for which ``wanted`` holds (read until one comes, or fail)."""
    async with asyncio.timeout(READ_S):
        while True:
            message = await recv(ws)
            assert message["type"] == "stats", message
            if wanted(message):
                return message


def pool(frame: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [p for p in frame["pools"] if p["pool"] == name]
    return dict(found)


def gauge(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise AssertionError(f"no {name} {labels} in /metrics")


# --- the tests ----------------------------------------------------------------------------------


def test_an_admin_gets_the_queues_the_workers_and_the_models_as_queued(stack: Stack) -> None:
    waiting = [stack.submit("orphan", 1, 4) for _ in range(3)]  # no worker: they wait
    running = stack.submit("slow", 40_000, 16)  # 20,000 chunks: runs until canceled
    wait_for(
        lambda: (
            stack.http("GET", f"/v1/jobs/{running['id']}", stack.tenant).json()["status"]
            == "started"
        ),
        what="the slow job to start",
    )
    oldest = min(float(stack.redis.hget(keys.job(j["id"]), "created_at") or 0) for j in waiting)
    (worker_id,) = [  # the live one: the worker of pool "nobody" has left
        w.decode()
        for w in stack.redis.zrange(keys.WORKERS, 0, -1)
        if stack.redis.exists(keys.worker(w.decode()))
    ]

    async def run() -> dict[str, Any]:
        async with stack.socket(stack.admin) as ws:
            await ask_stats(ws)
            frame = await frame_where(
                ws,
                lambda f: (
                    pool(f, "nobody")["depth"] == 3
                    and pool(f, "default")["running"] == 1
                    and any(w.get("running") == 1 for w in f["workers"])
                ),  # by its next heartbeat
            )
            for job in (running, *waiting):
                stack.cancel(job["id"])
            emptied = await frame_where(
                ws, lambda f: pool(f, "nobody")["depth"] == 0 and pool(f, "default")["running"] == 0
            )
            assert pool(emptied, "nobody")["oldest_age_s"] == 0.0
            return frame

    frame = asyncio.run(run())
    assert set(frame) == {"type", "ts", "models", "pools", "workers", "online"}
    nobody = pool(frame, "nobody")
    assert nobody == {
        "pool": "nobody",
        "depth": 3,
        "running": 0,
        "oldest_age_s": pytest.approx(frame["ts"] - oldest, abs=1e-3),
        "workers": 0,
        "models": ["orphan"],
    }
    default = pool(frame, "default")
    assert (default["depth"], default["running"], default["workers"]) == (0, 1, 1)
    assert {"digits", "iris", "slow"} <= set(default["models"])
    (me,) = [w for w in frame["workers"] if w["id"] == worker_id]
    assert me["alive"] and me["pool"] == "default" and me["running"] == 1
    assert "figures" not in me  # those are for /metrics
    models = {m["name"]: m for m in frame["models"]}
    assert models["orphan"]["ready"] is False and models["digits"]["workers"] == [worker_id]
    # the same as the HTTP routes show the admin, now that nothing is queued or running
    now = asyncio.run(_one_frame(stack, stack.admin))
    assert now["models"] == stack.http("GET", "/v1/models", stack.admin).json()["models"]
    queues = stack.http("GET", "/v1/queues", stack.admin).json()["pools"]
    assert [{**p, "oldest_age_s": 0.0} for p in now["pools"]] == queues


def test_the_queue_depth_is_the_one_of_metrics(stack: Stack) -> None:
    waiting = [stack.submit("orphan", 1, 4) for _ in range(2)]

    async def run() -> dict[str, Any]:
        async with stack.socket(stack.admin) as ws:
            await ask_stats(ws)
            return await frame_where(ws, lambda f: pool(f, "nobody")["depth"] == 2)

    frame = asyncio.run(run())
    scrape = stack.http("GET", "/metrics", stack.admin).text
    for p in frame["pools"]:
        assert gauge(scrape, "inferhub_queue_depth", pool=p["pool"]) == p["depth"], p
        assert gauge(scrape, "inferhub_jobs_running", pool=p["pool"]) == p["running"], p
        assert gauge(scrape, "inferhub_workers", pool=p["pool"]) == p["workers"], p
    for job in waiting:
        stack.cancel(job["id"])


async def _one_frame(stack: Stack, key: str) -> dict[str, Any]:
    async with stack.socket(key) as ws:
        await ask_stats(ws)
        return await recv(ws)


def test_a_tenant_gets_the_models_only(stack: Stack) -> None:
    job = stack.submit("orphan", 1, 4)
    frame = asyncio.run(_one_frame(stack, stack.tenant))
    stack.cancel(job["id"])
    assert set(frame) == {"type", "ts", "models"}  # pools and workers tell every tenant's jobs
    assert frame["models"] == stack.http("GET", "/v1/models", stack.tenant).json()["models"]
    for route in ("/v1/queues", "/v1/workers", "/metrics"):  # as over HTTP
        assert stack.http("GET", route, stack.tenant).status_code == 403


def test_an_admin_sees_this_hubs_online_traffic(stack: Stack) -> None:
    tensor = {"name": "input", "datatype": "FP32", "shape": [2, 4], "data": [0.5] * 8}
    for _ in range(3):
        r = stack.http("POST", "/v2/models/iris/infer", stack.tenant, json={"inputs": [tensor]})
        assert r.status_code == 200, r.text

    async def run() -> dict[str, Any]:
        async with stack.socket(stack.admin) as ws:
            await ask_stats(ws)
            return await frame_where(ws, lambda f: "iris" in f["online"])

    iris = asyncio.run(run())["online"]["iris"]
    assert iris["succeeded"] == 3 and iris["rows"] == 6
    assert 1 <= iris["batches"] <= 3 and iris["batched_requests"] == 3


def test_every_connection_gets_the_same_snapshot_and_stops_when_it_asks(stack: Stack) -> None:
    async def run() -> None:
        async with (
            stack.socket(stack.admin) as a,
            stack.socket(stack.admin) as b,
            stack.socket(stack.tenant) as t,
        ):
            await ask_stats(a)
            await ask_stats(b)
            await ask_stats(t)
            seen_b = {(await recv(b))["ts"] for _ in range(3)}
            seen_t = {(await recv(t))["ts"] for _ in range(3)}
            last = max(seen_b | seen_t)
            seen_a = set()
            while not seen_a or max(seen_a) < last:
                seen_a.add((await recv(a))["ts"])
            # one snapshot per interval for the hub: every frame of b and t is one a got too
            assert seen_b <= seen_a and seen_t <= seen_a
            # a stops: once b has a frame read after that, a has none before its next reply
            await ask_stats(a, on=False)
            stopped = time.time()
            await frame_where(b, lambda f: f["ts"] > stopped)
            await send(a, {"type": "ping", "ref": "p"})
            assert await recv(a) == {"type": "pong", "ref": "p"}

    asyncio.run(run())


def test_a_wrong_stats_request_gets_an_error_and_the_socket_stays_open(stack: Stack) -> None:
    async def run() -> None:
        async with stack.socket(stack.tenant) as ws:
            for bad in ({"on": "sometimes"}, {"every_s": 1}):
                await send(ws, {"type": "stats", "ref": 1, **bad})
                error = await recv(ws)
                assert (error["type"], error["code"], error["ref"]) == (
                    "error",
                    "invalid_request",
                    1,
                )
            await ask_stats(ws)
            assert (await recv(ws))["type"] == "stats"

    asyncio.run(run())


def test_a_snapshot_redis_could_not_give_is_a_frame_that_says_why() -> None:
    failed = cluster.Snapshot(at=12.5, error="Connection refused")
    for admin in (True, False):
        assert stats.message(failed, admin=admin) == {
            "type": "stats",
            "ts": 12.5,
            "error": "the deployment could not be read from Redis: Connection refused",
        }
