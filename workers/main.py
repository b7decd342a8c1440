"""The worker of one pool: its job function, start-up and shutdown, and the entry point."""

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

from contract import collector, tracing
from contract.jobstore import RUN_JOB, RUN_JOBS, JobStore, Limits
from contract.online import RUN_BATCH
from contract.settings import Settings
from workers.attempt import Function
from workers.heartbeat import beat, heartbeat_forever, leave
from workers.loop import WorkerLoop, serve_until_signalled
from workers.online import run_batch
from workers.reaper import reap_forever
from workers.repository import longest_timeout
from workers.runner import run_job, run_jobs
from workers.serving import Serving, follow_forever
from workers.stats import Tally
from workers.tracing import traced_batch, traced_job

log = logging.getLogger(__name__)

# a job is dropped silently after this many runs (as arq drops it): high, so that only a job
# that kills its worker every time (or a Redis down for minutes) reaches it
MAX_TRIES = 20


def new_worker_id() -> str:
    """``host-pid-random``: unique per start, and it says where the worker runs."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def worker_loop(settings: Settings, worker_id: str) -> WorkerLoop:
    """The worker of ``settings.pool``; nothing is loaded until start-up."""
    longest = longest_timeout(settings.models)

    async def startup(ctx: dict[str, Any]) -> None:
        ctx["worker_id"] = worker_id
        # what it serves changes while it runs (load, unload, new versions: workers/serving.py)
        serving = ctx["serving"] = Serving(settings.models, settings.pool, Tally())
        await serving.refresh(ctx["redis"])
        await serving.tally.prepare(ctx["redis"])
        ctx["models"], ctx["batchers"], ctx["tally"] = (
            serving.models,
            serving.batchers,
            serving.tally,
        )
        ctx["stats"] = {"running": 0, "done": 0, "started_at": time.time()}
        ctx["store"] = JobStore(ctx["redis"], Limits.of(settings))

        async def announce() -> None:
            await beat(
                ctx["redis"],
                worker_id,
                settings.pool,
                serving,
                ctx["stats"],
                settings.heartbeat_s * 3,
            )

        # beat once before taking any job: the reaper of another worker must never see a
        # job of ours while we have no heartbeat
        await announce()
        ctx["heartbeat"] = asyncio.create_task(
            heartbeat_forever(
                ctx["redis"], worker_id, settings.pool, serving, ctx["stats"], settings.heartbeat_s
            )
        )
        ctx["reaper"] = asyncio.create_task(
            reap_forever(ctx["redis"], settings.pool, every_s=settings.heartbeat_s, worker=loop)
        )
        ctx["repository"] = asyncio.create_task(
            follow_forever(
                serving,
                ctx["redis"],
                poll_s=settings.repository_poll_s,
                on_change=announce,
                check_every_s=settings.heartbeat_s,
            )
        )
        models = ", ".join(serving.models)
        log.info("worker %s serves pool %r: %s", worker_id, settings.pool, models)
        collector.settle()  # the models' sessions and start-up's objects out of its scans

    async def shutdown(ctx: dict[str, Any]) -> None:
        for task in (ctx.get("heartbeat"), ctx.get("reaper"), ctx.get("repository")):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if "serving" in ctx:
            await ctx["serving"].close()
        with contextlib.suppress(Exception):
            await leave(ctx["redis"], worker_id, settings.pool)

    loop = WorkerLoop(
        # the model's own timeout fails the job cleanly first; this one is the backstop
        [
            Function(RUN_JOB, traced_job(run_job), timeout_s=longest + 10, max_tries=MAX_TRIES),
            Function(RUN_JOBS, run_jobs, timeout_s=longest + 10, max_tries=MAX_TRIES),
            # a batch that kills its worker runs again while its requests' deadlines allow
            Function(
                RUN_BATCH, traced_batch(run_batch), timeout_s=longest + 10, max_tries=MAX_TRIES
            ),
        ],
        redis_url=settings.redis_url,
        pool=settings.pool,
        worker_id=worker_id,
        max_jobs=settings.max_jobs,
        poll_delay_s=settings.poll_delay_s,
        on_startup=startup,
        on_shutdown=shutdown,
    )
    return loop


def run_worker(settings: Settings) -> None:
    """Run a worker until SIGINT or SIGTERM."""
    # uvloop (a dependency of uvicorn[standard]) cuts the event loop's cost per Redis round trip
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    tracing.setup("inferhub-worker")  # on when OTEL_EXPORTER_OTLP_ENDPOINT is set
    serve_until_signalled(worker_loop(settings, new_worker_id()))
