"""``/healthz`` (the process is alive) and ``/readyz`` (Redis answers and a worker is alive)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from redis.exceptions import RedisError

from hub.deps import CatalogueDep
from hub.responses import JSON

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The hub process is alive")
async def healthz() -> dict[str, Any]:
    return {"status": "ok"}


@router.get("/readyz", summary="Redis is reachable and at least one worker is alive")
async def readyz(catalogue: CatalogueDep) -> JSON:
    try:
        await catalogue.redis.ping()
        workers = await catalogue.workers()
    except (RedisError, OSError) as exc:
        return JSON({"ready": False, "reason": f"redis unreachable: {exc}"}, 503)
    if not workers:
        return JSON({"ready": False, "reason": "no live worker"}, 503)
    return JSON({"ready": True, "workers": len(workers)})
