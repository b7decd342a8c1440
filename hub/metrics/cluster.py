"""The deployment as Redis knows it at one moment: workers, models and each pool's queue.

One read (``read``) serves ``/metrics``, ``/v1/queues`` and the WebSocket's ``stats`` message,
and ``PoolStats`` is the one definition of queue depth that all three show:

- a pool's queue is arq's sorted set, which holds a job from its submission until it ends;
- an entry with arq's in-progress key (set by the worker that claimed it) is **running**;
- every other entry is **waiting**: the queue **depth** is the number of waiting entries.

Only the first ``QUEUE_SCAN`` entries of a queue are looked at to tell the two apart, so a
running count above that is capped (and the depth grows by the difference).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from contract import keys, scripts
from hub.catalogue import Catalogue

QUEUE_SCAN = 1000
"""Queue entries looked at per pool and read to tell waiting jobs from running ones."""

QUEUE_STATS = scripts.load("queue_stats")


@dataclass(frozen=True)
class PoolStats:
    """One pool at the snapshot's time (see the module's docstring for what counts as what)."""

    pool: str
    depth: int  # jobs waiting in the queue, not yet taken by a worker
    running: int  # jobs of the queue a worker holds
    oldest_age_s: float  # age of the oldest waiting job; 0 when none waits
    workers: int  # live workers of the pool
    models: tuple[str, ...]  # the models the pool serves

    def view(self) -> dict[str, Any]:
        """As ``/v1/queues`` and the ``stats`` message show it."""
        return {
            "pool": self.pool,
            "depth": self.depth,
            "running": self.running,
            "oldest_age_s": self.oldest_age_s,
            "workers": self.workers,
            "models": list(self.models),
        }


@dataclass(frozen=True)
class Snapshot:
    """What Redis said at ``at`` (unix seconds); ``error`` says why it could not be read."""

    at: float
    workers: list[dict[str, Any]] = field(default_factory=list)  # as /v1/workers lists them
    models: dict[str, dict[str, Any]] = field(default_factory=dict)  # the catalogue's entries
    pools: list[PoolStats] = field(default_factory=list)  # by name
    error: str | None = None


async def read(catalogue: Catalogue) -> Snapshot:
    """The deployment now: a few round trips, one per pool for its queue."""
    at = time.time()
    try:
        workers = await catalogue.workers(include_stopped=True)
        models = await catalogue.models()
        served: dict[str, list[str]] = {}
        for entry in models.values():
            served.setdefault(entry.get("pool", "default"), []).append(entry["name"])
        alive: dict[str, int] = {}
        for worker in workers:
            if worker.get("alive") and "pool" in worker:
                alive[worker["pool"]] = alive.get(worker["pool"], 0) + 1
        pools = []
        for pool in sorted(set(served) | set(alive)):
            total, running, oldest = await QUEUE_STATS(
                catalogue.redis,
                keys={"queue": keys.queue(pool)},
                args={
                    "in_progress_prefix": keys.in_progress_prefix(pool),
                    "job_prefix": keys.job_prefix(pool),
                    "scan": QUEUE_SCAN,
                },
            )
            pools.append(
                PoolStats(
                    pool=pool,
                    depth=max(0, int(total) - int(running)),
                    running=int(running),
                    oldest_age_s=max(0.0, at - float(oldest)) if oldest else 0.0,
                    workers=alive.get(pool, 0),
                    models=tuple(sorted(served.get(pool, ()))),
                )
            )
    except (RedisError, OSError) as exc:
        return Snapshot(at=at, error=str(exc))
    return Snapshot(at=at, workers=workers, models=models, pools=pools)
