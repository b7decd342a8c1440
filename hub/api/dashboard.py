"""The dashboard: ``static/index.html`` at ``/``, its files under ``/static``, and ``/v1/queues``.

The page itself (plain HTML, CSS and JS modules, no build step) lives in the repository's
``static/`` folder, next to ``hub/``; an editable install serves it from the source tree.
Everything live it shows comes from the WebSocket (events, and the ``stats`` message for
models, workers and queues). ``/v1/queues`` gives the ``stats`` message's pools over HTTP.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter
from redis.exceptions import RedisError
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.staticfiles import StaticFiles

from hub.deps import CallerDep, CatalogueDep
from hub.errors import error_responses
from hub.metrics import cluster

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
    summary="Jobs waiting and running in each pool's queue; admin only",
    responses=error_responses(401, 403, 503),
)
async def queues(catalogue: CatalogueDep, caller: CallerDep) -> dict[str, Any]:
    """Per pool: the jobs waiting in its queue (``depth``, as ``inferhub_queue_depth``), those a
    worker runs, the oldest waiting job's age, the live workers and the models it serves
    (hub/metrics/cluster.py defines each). Every tenant's jobs count there, hence admin only."""
    caller.need("admin", "/v1/queues shows every tenant's activity")
    snapshot = await cluster.read(catalogue)
    if snapshot.error is not None:
        raise RedisError(snapshot.error)  # the one 503 answer for an unreachable Redis
    return {"pools": [pool.view() for pool in snapshot.pools]}
