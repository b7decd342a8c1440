"""The dashboard: ``static/index.html`` at ``/``, its files under ``/static``, and ``/v1/queues``.

The page itself (plain HTML, CSS and JS modules, no build step) lives in the repository's
``static/`` folder, next to ``hub/``; an editable install serves it from the source tree.
Everything else the page shows comes from the WebSocket and the other ``/v1`` routes; the one
thing they do not tell is how many jobs wait in each pool's arq queue, hence ``/v1/queues``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.staticfiles import StaticFiles

from contract import keys
from hub.deps import CallerDep, CatalogueDep
from hub.errors import error_responses

STATIC = Path(__file__).resolve().parents[2] / "static"

router = APIRouter(tags=["dashboard"])

if STATIC.is_dir():
    router.mount("/static", StaticFiles(directory=STATIC), name="static")


@router.get("/", include_in_schema=False)
async def index() -> Response:
    page = STATIC / "index.html"
    if not page.is_file():
        return PlainTextResponse(
            f"the dashboard is not installed here ({page} is missing); the API is at /docs",
            status_code=404,
        )
    # always revalidate, so that a new version of the page is picked up at once
    return FileResponse(page, headers={"Cache-Control": "no-cache"})


@router.get(
    "/v1/queues",
    summary="Jobs in each pool's queue (waiting or running); admin only",
    responses=error_responses(401, 403, 503),
)
async def queues(catalogue: CatalogueDep, caller: CallerDep) -> dict[str, Any]:
    """Per pool: the jobs in its arq queue (waiting or running; arq keeps a job there until it
    ends), the live workers and the jobs they run, and the models it serves. Every tenant's
    jobs count there, hence admin only."""
    caller.need("admin", "/v1/queues shows every tenant's activity")
    workers = await catalogue.workers()
    models = await catalogue.models()
    pools: dict[str, dict[str, Any]] = {}

    def pool(name: str) -> dict[str, Any]:
        return pools.setdefault(name, {"pool": name, "workers": 0, "running": 0, "models": []})

    for entry in models.values():
        pool(entry.get("pool", "default"))["models"].append(entry["name"])
    for worker in workers:
        p = pool(worker.get("pool", "default"))
        p["workers"] += 1
        p["running"] += int(worker.get("running", 0))
    names = sorted(pools)
    async with catalogue.redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.zcard(keys.queue(name))
        depths = await pipe.execute()
    for name, depth in zip(names, depths, strict=True):
        pools[name]["depth"] = int(depth)
        pools[name]["models"].sort()
    return {"pools": [pools[name] for name in names]}
