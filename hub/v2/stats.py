"""Triton's statistics extension: ``/v2/models/stats``, ``/v2/models/{m}/stats`` and
``/v2/models/{m}/versions/{v}/stats``, read from the hashes the workers add to
(``contract/stats.py``); gRPC's ``ModelStatistics`` reads them here too.

This router is included before the one of ``routes.py``, whose ``/v2/models/{model}`` would
otherwise take ``/v2/models/stats`` for the metadata of a model named "stats".
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from contract import keys
from contract.stats import model_stats
from hub.catalogue import Catalogue
from hub.deps import CatalogueDep, ReaderDep
from hub.errors import error_responses
from hub.v2.errors import SCHEMA, V2Route

router = APIRouter(
    tags=["v2"],
    route_class=V2Route,
    responses=error_responses(400, 401, 403, 404, 503, schema=SCHEMA),
)


async def statistics(
    catalogue: Catalogue, model: str | None = None, version: str | None = None
) -> dict[str, Any]:
    """``{"model_stats": [...]}`` of one version, of every version of a model (no version),
    or of every model (no model), as Triton answers; in one round trip."""
    if model is None:
        models = await catalogue.models()
        wanted = [(n, v) for n, e in sorted(models.items()) for v in sorted(e["versions"], key=int)]
    else:
        entry, _ = await catalogue.model(model, version)  # 404 for an unknown model or version
        versions = [version] if version else sorted(entry["versions"], key=int)
        wanted = [(entry["name"], v) for v in versions]
    async with catalogue.redis.pipeline(transaction=False) as pipe:
        for name, v in wanted:
            pipe.hgetall(keys.model_stats(name, v))
        hashes = await pipe.execute()
    return {
        "model_stats": [model_stats(n, v, raw) for (n, v), raw in zip(wanted, hashes, strict=True)]
    }


@router.get("/v2/models/stats", summary="Statistics of every model version")
async def all_models(catalogue: CatalogueDep, _: ReaderDep) -> dict[str, Any]:
    return await statistics(catalogue)


@router.get("/v2/models/{model}/stats", summary="Statistics of every version of the model")
async def one_model(model: str, catalogue: CatalogueDep, _: ReaderDep) -> dict[str, Any]:
    return await statistics(catalogue, model)


@router.get(
    "/v2/models/{model}/versions/{version}/stats", summary="Statistics of one model version"
)
async def one_version(
    model: str, version: str, catalogue: CatalogueDep, _: ReaderDep
) -> dict[str, Any]:
    return await statistics(catalogue, model, version)
