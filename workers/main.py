"""The arq worker of one pool: settings factory and entry point."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from typing import Any

import uvloop
from arq import func

from contract import keys
from contract.connection import arq_settings
from contract.jobstore import RUN_JOB, JobStore, Limits
from contract.settings import Settings
from contract.wire import dumps, loads
from workers.batcher import Batcher
from workers.heartbeat import beat, heartbeat_forever, leave
from workers.reaper import reap_forever
from workers.repository import load_repository
from workers.runner import run_job
from workers.wakeup import PushWorker

log = logging.getLogger(__name__)

# arq drops a job silently after this many runs: high, so that only a job that kills its
# worker every time (or a Redis down for minutes) reaches it
MAX_TRIES = 20


def new_worker_id() -> str:
    """``host-pid-random``: unique per start, and it says where the worker runs."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def worker_settings(settings: Settings, worker_id: str) -> dict[str, Any]:
    """Keyword arguments for ``arq.worker.Worker``; nothing is loaded until start-up."""
    repo = load_repository(settings.models, settings.pool)
    longest = max((m.config.timeout_s for m in repo.models.values()), default=30.0)

    async def startup(ctx: dict[str, Any]) -> None:
        ctx["worker_id"] = worker_id
        ctx["models"] = repo.models
        ctx["batchers"] = {
            (name, version): Batcher(
                mv.session,
                max_batch_size=model.config.max_batch_size,
                preferred_batch_size=model.config.batching.preferred_batch_size,
                max_queue_delay_ms=model.config.batching.max_queue_delay_ms,
                batchable=mv.batchable,
            )
            for name, model in repo.models.items()
            for version, mv in model.versions.items()
        }
        ctx["stats"] = {"running": 0, "done": 0, "started_at": time.time()}
        ctx["store"] = JobStore(ctx["redis"], Limits.of(settings))
        # beat once before taking any job: the reaper of another worker must never see a
        # job of ours while we have no heartbeat
        await beat(
            ctx["redis"], worker_id, settings.pool, repo, ctx["stats"], settings.heartbeat_s * 3
        )
        ctx["heartbeat"] = asyncio.create_task(
            heartbeat_forever(
                ctx["redis"], worker_id, settings.pool, repo, ctx["stats"], settings.heartbeat_s
            )
        )
        ctx["reaper"] = asyncio.create_task(
            reap_forever(ctx["redis"], settings.pool, every_s=settings.heartbeat_s)
        )
        log.info("worker %s serves pool %r: %s", worker_id, settings.pool, ", ".join(repo.models))

    async def shutdown(ctx: dict[str, Any]) -> None:
        for task in (ctx.get("heartbeat"), ctx.get("reaper")):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for batcher in ctx.get("batchers", {}).values():
            await batcher.close()
        with contextlib.suppress(Exception):
            await leave(ctx["redis"], worker_id)

    return {
        # the model's own timeout fails the job cleanly first; arq's is the backstop
        "functions": [func(run_job, name=RUN_JOB, timeout=longest + 10, max_tries=MAX_TRIES)],
        "redis_settings": arq_settings(settings.redis_url),
        "queue_name": keys.queue(settings.pool),
        "on_startup": startup,
        "on_shutdown": shutdown,
        "job_serializer": dumps,
        "job_deserializer": loads,
        "keep_result": 0,
        "poll_delay": settings.poll_delay_s,
        "max_jobs": settings.max_jobs,
        "handle_signals": True,
    }


def run_worker(settings: Settings) -> None:
    """Run a worker until SIGINT or SIGTERM."""
    # uvloop (a dependency of uvicorn[standard]) cuts the event loop's cost per Redis round trip
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    worker_id = new_worker_id()
    options = worker_settings(settings, worker_id)
    PushWorker(
        wake_channel=keys.wake(settings.pool, options["redis_settings"].database),
        redis_url=settings.redis_url,
        worker_id=worker_id,
        **options,
    ).run()
