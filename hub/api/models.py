"""``/v1/models`` and ``/v1/workers``: what is served, and by whom (the workers, with the jobs
they run for every tenant, only to ``admin``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from hub.catalogue import model_view, model_views
from hub.deps import CallerDep, CatalogueDep, ReaderDep
from hub.errors import error_responses

router = APIRouter(
    prefix="/v1", tags=["models"], responses=error_responses(401, 403, 404, 422, 503)
)


@router.get("/models", summary="Every model the workers serve")
async def list_models(catalogue: CatalogueDep, _: ReaderDep) -> dict[str, Any]:
    workers = await catalogue.workers()
    models = await catalogue.models()
    return {"models": model_views(models, workers)}


@router.get("/models/{name}", summary="One model", responses={404: {"description": "Unknown"}})
async def get_model(name: str, catalogue: CatalogueDep, _: ReaderDep) -> dict[str, Any]:
    entry, _version = await catalogue.model(name)
    return model_view(entry, await catalogue.workers())


@router.get("/workers", summary="Live workers (and recently stopped ones); admin only")
async def list_workers(catalogue: CatalogueDep, caller: CallerDep) -> dict[str, Any]:
    caller.need("admin", "/v1/workers shows every tenant's activity")
    return {"workers": await catalogue.workers(include_stopped=True)}
