"""Triton's repository extension: the desired state of what the workers serve, in Redis.

Workers serve every model of their pool's repository folder except those unloaded here. A
load or unload changes the state and bumps a generation and nudges every worker (pub/sub) in one
script; each worker applies it (``workers/serving.py``) and says in its heartbeat
record the generation it applied, so the hub knows when every live worker has.
"""

from __future__ import annotations

from redis.asyncio import Redis

from contract import keys, scripts
from contract.connection import database

UNLOADED = "unloaded"  # the value lua/repository_change.lua writes
READ = scripts.load("repository_read")
CHANGE = scripts.load("repository_change")
NAMES = {"generation": keys.REPOSITORY_GENERATION, "unloaded": keys.REPOSITORY}


async def desired(redis: Redis) -> tuple[int, frozenset[str]]:
    """The generation and the unloaded models, read together."""
    generation, names = await READ(redis, NAMES, {})
    return int(generation), frozenset(n.decode() for n in names)


async def change(redis: Redis, model: str, *, load: bool) -> int:
    """Mark ``model`` loaded (the default) or unloaded; the new generation. Workers are nudged."""
    nudge = keys.repository_nudge(database(redis))
    return int(await CHANGE(redis, {**NAMES, "nudge": nudge}, {"model": model, "load": int(load)}))
