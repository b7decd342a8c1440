"""Prompt recovery of the jobs of a dead worker.

arq keeps a job in its queue until it ends and guards it with an in-progress key (``keys.in_progress_prefix``), which
expires only after the job's timeout plus 10 s: a worker killed after claiming jobs would hold
them that long, whether it had started them or not. The claim (``workers/loop.py``) stores the
claiming worker's id in that key, and so does the hub when it hands a job to a parked worker
(``contract/lua/arq.lua``'s ``hand_off``). Every worker of a pool also watches the others: a job held by
a worker whose heartbeat has expired gets its in-progress key deleted, the pool is woken, and
the next poll of any worker runs it (a started job as its next attempt). A live worker's
heartbeat never expires while it runs, so its jobs are never taken from it; but a worker
gives up its own claims on jobs it does not run (after a Redis failover lost the end of their
attempt), so that they run again at once rather than when their hold expires; and, as it stops,
those of handoffs it will not read (``release`` with ``grace_ms`` -1).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from redis.asyncio import Redis
from redis.exceptions import RedisError

from contract import keys, scripts
from contract.connection import database

if TYPE_CHECKING:
    from workers.loop import WorkerLoop

log = logging.getLogger(__name__)

REAP = scripts.load("reap")


OWN_GRACE_MS = 5000
"""A claim of the reaping worker's own that is older than this and whose job it does not run
is stale, and released: a failover lost the end of that job's attempt (or the reply to the
claim). Claims younger than this are left alone, as a claim's reply may still be on its way."""


async def release(
    redis: Redis, pool: str, worker: WorkerLoop, grace_ms: int, scan: int = 1000
) -> list[str]:
    """Release the jobs of the first ``scan`` of the pool's queue held by dead workers, and
    ``worker``'s own holds older than ``grace_ms`` on jobs it does not run; their ids."""
    released = await REAP(
        redis,
        keys={"queue": keys.queue(pool), "wake": keys.wake(pool, database(redis))},
        args={
            "in_progress_prefix": keys.in_progress_prefix(pool),
            "job_prefix": keys.job_prefix(pool),
            "worker_prefix": keys.worker_lease(pool, ""),
            "scan": scan,
            "worker_id": worker.worker_id,
            "hold_ms": worker.hold_ms,
            "grace_ms": grace_ms,
            "running": worker.running(),
        },
    )
    return [job_id.decode() for job_id in released]


async def reap_forever(redis: Redis, pool: str, every_s: float, worker: WorkerLoop) -> None:
    while True:
        await asyncio.sleep(every_s)
        try:
            released = await release(redis, pool, worker, OWN_GRACE_MS)
        except (RedisError, OSError) as exc:
            log.warning("could not look for orphaned jobs: %s", exc)
            continue
        for job_id in released:
            log.warning("job %s: its worker is gone or lost it; it runs again", job_id)
