"""``/healthz`` (the process is alive) and ``/readyz`` (Redis answers and a worker is alive)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from redis.exceptions import RedisError

from hub.catalogue import Catalogue
from hub.deps import CatalogueDep
from hub.responses import JSON

router = APIRouter(tags=["health"])

READY_TIMEOUT_S = 0.8
"""The hub's Redis client retries a dropped connection for seconds (contract/connection.py); a
readiness probe must answer within a second, so it gives up first."""


async def probe_workers(catalogue: Catalogue) -> list[dict[str, Any]] | str:
    """The live workers, or why Redis could not say (for /readyz and /v2/health/ready)."""
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            await catalogue.redis.ping()
            return await catalogue.workers()
    except TimeoutError:  # before OSError, of which it is a subclass
        return f"no answer within {READY_TIMEOUT_S} s"
    except (RedisError, OSError) as exc:
        return str(exc)


@router.get("/healthz", summary="The hub process is alive")
async def healthz() -> dict[str, Any]:
    return {"status": "ok"}


@router.get("/readyz", summary="Redis is reachable and at least one worker is alive")
async def readyz(catalogue: CatalogueDep) -> JSON:
    workers = await probe_workers(catalogue)
    if isinstance(workers, str):
        return JSON({"ready": False, "reason": f"redis unreachable: {workers}"}, 503)
    if not workers:
        return JSON({"ready": False, "reason": "no live worker"}, 503)
    return JSON({"ready": True, "workers": len(workers)})
