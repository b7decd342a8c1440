"""Workers of test functions for ``test_worker_loop.py``: the real loop with the real heartbeat
and reaper, and no models. Run as a process, it is the real entry point too::

    python tests/loop_worker.py REDIS_URL POOL   # runs every job with ``hold``, until a signal

Each worker tells the test what happens on the Redis list ``notes(pool)`` (the test waits with
BLPOP): ``started <job_try>`` when ``hold`` starts, ``shutdown <worker id>`` from the shutdown
hook.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from contract.jobstore import RUN_JOB
from workers.attempt import Function
from workers.heartbeat import beat, heartbeat_forever, leave
from workers.loop import WorkerLoop, serve_until_signalled
from workers.reaper import reap_forever
from workers.serving import Serving
from workers.stats import Tally

HEARTBEAT_S = 0.2  # a killed worker's heartbeat expires after 3 of these
NO_MODELS = Serving(Path("no-models"), "none", Tally())  # never refreshed: serves nothing


def notes(pool: str) -> str:
    return f"t:loop:{pool}:notes"


async def hold(ctx: dict[str, Any], **_: Any) -> None:
    """Say it started, then wait until canceled."""
    await ctx["redis"].rpush(notes(ctx["pool"]), f"started {ctx['job_try']}")
    await asyncio.Event().wait()


def worker(
    redis_url: str, pool: str, functions: Sequence[Function], *, reaper: bool = False
) -> WorkerLoop:
    """A worker of ``pool`` that heartbeats (and, with ``reaper``, reaps) as the real one does."""
    worker_id = f"t-loop-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    background: list[asyncio.Task[None]] = []

    async def startup(ctx: dict[str, Any]) -> None:
        redis = ctx["redis"]
        ctx["pool"] = pool
        stats = {"running": 0, "done": 0, "started_at": time.time()}
        await beat(redis, worker_id, pool, NO_MODELS, stats, ttl_s=HEARTBEAT_S * 3)
        background.append(
            asyncio.create_task(
                heartbeat_forever(redis, worker_id, pool, NO_MODELS, stats, HEARTBEAT_S)
            )
        )
        if reaper:
            reaping = reap_forever(redis, pool, every_s=HEARTBEAT_S, worker=loop)
            background.append(asyncio.create_task(reaping))

    async def shutdown(ctx: dict[str, Any]) -> None:
        for task in background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await leave(ctx["redis"], worker_id, pool)
        await ctx["redis"].rpush(notes(pool), f"shutdown {worker_id}")

    loop = WorkerLoop(
        functions,
        redis_url=redis_url,
        pool=pool,
        worker_id=worker_id,
        max_jobs=4,
        poll_delay_s=0.05,
        on_startup=startup,
        on_shutdown=shutdown,
    )
    return loop


if __name__ == "__main__":
    url, pool_name = sys.argv[1:3]
    serve_until_signalled(worker(url, pool_name, [Function(RUN_JOB, hold, 60, max_tries=5)]))
