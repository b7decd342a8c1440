"""``/v1/models`` and ``/v1/workers``: what is served, and by whom (the workers, with the jobs
they run for every tenant, only to ``admin``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from hub.deps import CallerDep, CatalogueDep, ReaderDep
from hub.errors import error_responses

router = APIRouter(
    prefix="/v1", tags=["models"], responses=error_responses(401, 403, 404, 422, 503)
)


def _model_view(entry: dict[str, Any], workers: list[dict[str, Any]]) -> dict[str, Any]:
    serving = [w["id"] for w in workers if entry["name"] in w.get("models", ())]
    view = {k: v for k, v in entry.items() if k != "seen"}
    return {**view, "ready": bool(serving), "workers": serving}


@router.get("/models", summary="Every model the workers serve")
async def list_models(catalogue: CatalogueDep, _: ReaderDep) -> dict[str, Any]:
    workers = await catalogue.workers()
    models = await catalogue.models()
    return {"models": [_model_view(m, workers) for _, m in sorted(models.items())]}


@router.get("/models/{name}", summary="One model", responses={404: {"description": "Unknown"}})
async def get_model(name: str, catalogue: CatalogueDep, _: ReaderDep) -> dict[str, Any]:
    entry, _version = await catalogue.model(name)
    return _model_view(entry, await catalogue.workers())


@router.get("/workers", summary="Live workers (and recently stopped ones); admin only")
async def list_workers(catalogue: CatalogueDep, caller: CallerDep) -> dict[str, Any]:
    caller.need("admin", "/v1/workers shows every tenant's activity")
    return {"workers": await catalogue.workers(include_stopped=True)}
