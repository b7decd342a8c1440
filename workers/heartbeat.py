"""The worker's presence in Redis: who it is, what it serves, how busy it is.

The record expires when the heartbeats stop, so a dead worker drops out by itself; the models'
catalogue entries outlive it so that jobs for them are still accepted and wait in the queue.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from hub import keys
from workers.repository import Repository

log = logging.getLogger(__name__)


def worker_record(worker_id: str, pool: str, repo: Repository, stats: dict[str, int]) -> bytes:
    return orjson.dumps(
        {
            "id": worker_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "pool": pool,
            "models": sorted(repo.models),
            "errors": repo.errors,
            "running": stats["running"],
            "done": stats["done"],
            "started_at": stats["started_at"],
            "seen": time.time(),
        }
    )


async def beat(
    redis: Redis, worker_id: str, pool: str, repo: Repository, stats: dict[str, Any], ttl_s: float
) -> None:
    """One heartbeat, in one round trip."""
    now = time.time()
    async with redis.pipeline(transaction=False) as pipe:
        pipe.set(
            keys.worker(worker_id),
            worker_record(worker_id, pool, repo, stats),
            px=int(ttl_s * 1000),
        )
        pipe.zadd(keys.WORKERS, {worker_id: now})
        if repo.models:
            pipe.hset(
                keys.MODELS,
                mapping={
                    name: orjson.dumps({**model.catalogue_entry(), "seen": now})
                    for name, model in repo.models.items()
                },
            )
        await pipe.execute()


async def heartbeat_forever(
    redis: Redis, worker_id: str, pool: str, repo: Repository, stats: dict[str, Any], every_s: float
) -> None:
    while True:
        try:
            await beat(redis, worker_id, pool, repo, stats, ttl_s=every_s * 3)
        except (RedisError, OSError) as exc:
            log.warning("heartbeat failed, retrying: %s", exc)
        await asyncio.sleep(every_s)


async def leave(redis: Redis, worker_id: str) -> None:
    """Remove the heartbeat at a clean shutdown, so the hub sees the worker gone at once."""
    await redis.delete(keys.worker(worker_id))
