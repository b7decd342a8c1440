"""The worker's presence in Redis: who it is, what it serves, how busy it is.

The record expires when the heartbeats stop, so a dead worker drops out by itself; the models'
catalogue entries outlive it so that jobs for them are still accepted and wait in the queue.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import os
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import orjson
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError

from contract import keys
from contract.connection import connect_sync
from workers.repository import Model
from workers.stats import Tally

log = logging.getLogger(__name__)

# --- the worker's figures, carried by the heartbeat so that any hub's /metrics shows them -----

INFERENCE_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
)  # fmt: skip
"""Seconds of one onnxruntime call."""

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
"""Rows of one onnxruntime call."""


class Histogram:
    """A cumulative histogram as Prometheus has it, in plain Python (sent as JSON)."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def merge(self, other: Histogram) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.sum += other.sum

    def to_json(self) -> dict[str, Any]:
        """``le``: upper bounds; ``counts``: cumulative counts per bound; then count and sum."""
        cumulative, total = [], 0
        for n in self.counts[:-1]:
            total += n
            cumulative.append(total)
        return {
            "le": list(self.bounds),
            "counts": cumulative,
            "count": total + self.counts[-1],
            "sum": self.sum,
        }


def count_job(stats: dict[str, Any], model: str, status: str) -> None:
    """One more job of ``model`` ended with ``status`` on this worker."""
    by_status = stats.setdefault("jobs", {}).setdefault(model, {})
    by_status[status] = by_status.get(status, 0) + 1


def figures(stats: dict[str, Any]) -> dict[str, Any]:
    """Jobs by model and status, and per model the onnxruntime calls' seconds and rows."""
    seconds: dict[str, Histogram] = {}
    rows: dict[str, Histogram] = {}
    for (name, _version), batcher in stats.get("batchers", {}).items():
        seconds.setdefault(name, Histogram(INFERENCE_BUCKETS)).merge(batcher.seconds)
        rows.setdefault(name, Histogram(BATCH_BUCKETS)).merge(batcher.rows)
    return {
        "jobs": stats.get("jobs", {}),
        "inference_seconds": {m: h.to_json() for m, h in seconds.items() if h.sum},
        "batch_rows": {m: h.to_json() for m, h in rows.items() if h.sum},
    }


class Served(Protocol):
    """What the worker serves now (``workers/serving.py``)."""

    @property
    def models(self) -> Mapping[str, Model]: ...
    @property
    def errors(self) -> list[str]: ...
    @property
    def generation(self) -> int: ...  # the repository change applied last
    @property
    def tally(self) -> Tally: ...  # statistics not yet in Redis


WORKERS_KEPT_S = 3600.0
"""How long a stopped worker stays in the registry: ``/v1/workers`` lists those of the last hour."""


def worker_record(worker_id: str, pool: str, repo: Served, stats: dict[str, Any]) -> bytes:
    return orjson.dumps(
        {
            "id": worker_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "pool": pool,
            "models": sorted(repo.models),
            "errors": repo.errors,
            "generation": repo.generation,
            "running": stats["running"],
            "done": stats["done"],
            "started_at": stats["started_at"],
            "seen": time.time(),
            "figures": figures(stats),
        }
    )


async def beat(
    redis: Redis, worker_id: str, pool: str, repo: Served, stats: dict[str, Any], ttl_s: float
) -> None:
    """One heartbeat, in one round trip, with the statistics counted since the last write."""
    now = time.time()

    def presence(pipe: Any) -> None:
        pipe.set(
            keys.worker(worker_id),
            worker_record(worker_id, pool, repo, stats),
            px=int(ttl_s * 1000),
        )
        # the same presence in the pool's slot, for the claim and reap scripts
        pipe.set(keys.worker_lease(pool, worker_id), 1, px=int(ttl_s * 1000))
        pipe.zadd(keys.WORKERS, {worker_id: now})
        # every start adds an id: forget those silent for longer than anyone lists stopped ones
        pipe.zremrangebyscore(keys.WORKERS, "-inf", now - WORKERS_KEPT_S)
        if repo.models:
            pipe.hset(
                keys.MODELS,
                mapping={
                    name: orjson.dumps({**model.catalogue_entry(), "seen": now})
                    for name, model in repo.models.items()
                },
            )

    results = await repo.tally.send(redis, presence)
    errors = [r for r in results if isinstance(r, Exception)]
    if errors and not all(isinstance(e, NoScriptError) for e in errors):
        raise errors[0]


async def heartbeat_forever(
    redis: Redis, worker_id: str, pool: str, repo: Served, stats: dict[str, Any], every_s: float
) -> None:
    while True:
        try:
            await beat(redis, worker_id, pool, repo, stats, ttl_s=every_s * 3)
        except (RedisError, OSError) as exc:
            log.warning("heartbeat failed, retrying: %s", exc)
        await asyncio.sleep(every_s)


async def leave(redis: Redis, worker_id: str, pool: str) -> None:
    """Remove the heartbeat at a clean shutdown, so the hub sees the worker gone at once."""
    await redis.delete(keys.worker(worker_id))
    await redis.delete(keys.worker_lease(pool, worker_id))  # apart: another slot


def alive_here(redis_url: str) -> bool:
    """Whether a live worker of this host (container) has a heartbeat record in Redis."""
    client = connect_sync(redis_url, socket_connect_timeout=2, socket_timeout=2)
    try:
        pattern = keys.worker(f"{socket.gethostname()}-*")
        return any(True for _ in client.scan_iter(match=pattern, count=1000))
    finally:
        client.close()


if __name__ == "__main__":
    # a container health check: `python -m workers.heartbeat` exits 0 while this host's worker
    # heartbeats (INFERHUB_REDIS_URL), 1 otherwise
    from contract.settings import Settings

    try:
        sys.exit(0 if alive_here(Settings().redis_url) else 1)
    except Exception as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        sys.exit(1)
