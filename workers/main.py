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

from arq import func
from arq.connections import RedisSettings
from arq.worker import Worker

from hub import keys
from hub.jobstore import RUN_JOB, JobStore, Limits
from hub.protocol import dumps, loads
from hub.settings import Settings
from workers.heartbeat import heartbeat_forever, leave
from workers.repository import load_repository
from workers.runner import run_job

log = logging.getLogger(__name__)


def worker_settings(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``arq.worker.Worker``; nothing is loaded until start-up."""
    worker_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    repo = load_repository(settings.models, settings.pool)
    longest = max((m.config.timeout_s for m in repo.models.values()), default=30.0)

    async def startup(ctx: dict[str, Any]) -> None:
        ctx["worker_id"] = worker_id
        ctx["models"] = repo.models
        ctx["stats"] = {"running": 0, "done": 0, "started_at": time.time()}
        ctx["store"] = JobStore(ctx["redis"], Limits(ttl_s=settings.job_ttl_s))
        ctx["heartbeat"] = asyncio.create_task(
            heartbeat_forever(
                ctx["redis"], worker_id, settings.pool, repo, ctx["stats"], settings.heartbeat_s
            )
        )
        log.info("worker %s serves pool %r: %s", worker_id, settings.pool, ", ".join(repo.models))

    async def shutdown(ctx: dict[str, Any]) -> None:
        task = ctx.get("heartbeat")
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):
            await leave(ctx["redis"], worker_id)

    return {
        # the model's own timeout fails the job cleanly first; arq's is the backstop
        "functions": [func(run_job, name=RUN_JOB, timeout=longest + 10, max_tries=5)],
        "redis_settings": RedisSettings.from_dsn(settings.redis_url),
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
    Worker(**worker_settings(settings)).run()
