"""Triton's repository extension: the desired state of what the workers serve, in Redis.

Workers serve every model of their pool's repository folder except those unloaded here. A
load or unload changes the state and bumps a generation in one transaction, then nudges every
worker (pub/sub); each worker applies it (``workers/serving.py``) and says in its heartbeat
record the generation it applied, so the hub knows when every live worker has.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from contract import keys
from contract.connection import database

UNLOADED = "unloaded"


async def desired(redis: Redis) -> tuple[int, frozenset[str]]:
    """The generation and the unloaded models, read together."""
    async with redis.pipeline(transaction=True) as tx:
        tx.get(keys.REPOSITORY_GENERATION)
        tx.hkeys(keys.REPOSITORY)
        generation, names = await tx.execute()
    return int(generation or 0), frozenset(n.decode() for n in names)


async def change(redis: Redis, model: str, *, load: bool) -> int:
    """Mark ``model`` loaded (the default) or unloaded; the new generation. Workers are nudged."""
    async with redis.pipeline(transaction=True) as tx:
        if load:
            tx.hdel(keys.REPOSITORY, model)
        else:
            tx.hset(keys.REPOSITORY, model, UNLOADED)
        tx.incr(keys.REPOSITORY_GENERATION)
        tx.publish(keys.repository_nudge(database(redis)), model)
        results: list[Any] = await tx.execute()
    return int(results[1])
