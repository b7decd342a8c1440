"""Triton's repository extension and KServe's model list: ``GET /v2/models``,
``POST /v2/repository/index``, ``POST /v2/repository/models/{m}/load`` and ``.../unload``;
gRPC's ``RepositoryIndex``, ``RepositoryModelLoad`` and ``RepositoryModelUnload`` call the same
functions.

A load or unload changes the desired state in Redis and nudges every worker
(``contract/repository.py``); the call returns once every live worker has applied it (an
unload: once their requests in flight for the model have drained), so that what it answers is
what is served. Changing what the whole deployment serves takes the ``admin`` scope.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import orjson
from fastapi import APIRouter, Request

from contract import repository
from contract.errors import MalformedRequest, NotFound, Unavailable
from hub.catalogue import Catalogue, serving
from hub.deps import AdminDep, CatalogueDep, ReaderDep
from hub.errors import error_responses
from hub.v2 import config
from hub.v2.errors import SCHEMA, V2Route

router = APIRouter(
    tags=["v2"],
    route_class=V2Route,
    responses=error_responses(400, 401, 403, 404, 503, schema=SCHEMA),
)

APPLY_WAIT_S = 30.0
"""How long a load or unload waits for every live worker to apply it (then 503)."""

CHECK_EVERY_S = 0.02

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")


async def index(catalogue: Catalogue, only_ready: bool) -> list[dict[str, Any]]:
    """Every model version and its state, unloaded ones included."""
    models, unloaded = await catalogue.models(), await catalogue.unloaded()
    return config.repository_index(models, await catalogue.workers(), only_ready, unloaded)


async def load(catalogue: Catalogue, name: str) -> None:
    """Serve ``name`` again (or for the first time: a model dropped into a pool's repository);
    400 with the worker's reason when no worker could load it."""
    _check_name(name)
    workers = await _apply(catalogue, name, load=True)
    if serving(name, workers):
        return
    reasons = [e for w in workers for e in w.get("errors", ()) if _about(e, name)]
    if reasons:
        raise MalformedRequest(f"failed to load '{name}': {reasons[0]}", "load_failed")
    raise MalformedRequest(
        f"failed to load '{name}': no live worker has it in its model repository "
        f"({len(workers)} live workers looked)",
        "load_failed",
    )


async def unload(catalogue: Catalogue, name: str) -> None:
    """Stop serving ``name`` everywhere, once the requests it is running are done."""
    _check_name(name)
    if name not in await catalogue.models() and name not in await catalogue.unloaded():
        raise NotFound(f"model '{name}' does not exist", "model_not_found")
    await _apply(catalogue, name, load=False)


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise MalformedRequest(
            f"'{name[:100]}' is not a model name (letters, digits, '_', '.', '-')", "bad_name"
        )


def _about(error: str, name: str) -> bool:
    """Whether a worker's error line (``<folder>: <reason>``) is about the model ``name``."""
    folder = error.split(": ", 1)[0]
    return folder.rstrip("/").rsplit("/", 1)[-1] == name


async def _apply(catalogue: Catalogue, name: str, *, load: bool) -> list[dict[str, Any]]:
    """Change the desired state; the live workers once every one has applied it."""
    generation = await repository.change(catalogue.redis, name, load=load)
    deadline = time.monotonic() + APPLY_WAIT_S
    while True:
        workers = await catalogue.workers()
        late = [w["id"] for w in workers if w.get("generation", 0) < generation]
        if not late:
            catalogue.invalidate()  # this hub answers by the new state at once
            return workers
        if time.monotonic() > deadline:
            raise Unavailable(
                f"workers {', '.join(late)} did not apply the change within {APPLY_WAIT_S:g} s; "
                "it is recorded, and they apply it when they can",
                "not_applied",
            )
        await asyncio.sleep(CHECK_EVERY_S)


async def _options(request: Request) -> dict[str, Any]:
    """The JSON body's object (none: {}); a 400 when it is not one."""
    body = await request.body()
    try:
        options = orjson.loads(body) if body.strip() else {}
    except orjson.JSONDecodeError as exc:
        raise MalformedRequest(f"the body is not valid JSON: {exc}", "malformed_json") from None
    if not isinstance(options, dict):
        raise MalformedRequest("the body must be a JSON object", "malformed_json")
    return options


def refuse_load_parameters(parameters: dict[str, Any]) -> None:
    """Triton's load may carry a config or model files; inferhub reads the repository only."""
    if parameters:
        raise MalformedRequest(
            f"load parameters {sorted(parameters)} are not supported: put the model's files and "
            "config.toml in the repository folder, then load it",
            "unsupported_parameter",
        )


@router.get("/v2/models", summary="The names of the models served (KServe's model list)")
async def list_models(catalogue: CatalogueDep, _: ReaderDep) -> dict[str, list[str]]:
    return {"models": sorted(await catalogue.models())}


@router.post("/v2/repository/index", summary="Every model version and its state")
async def repository_index(
    request: Request, catalogue: CatalogueDep, _: ReaderDep
) -> list[dict[str, Any]]:
    options = await _options(request)
    return await index(catalogue, options.get("ready") is True)


@router.post("/v2/repository/models/{model}/load", summary="Load the model (admin)")
async def load_model(
    model: str, request: Request, catalogue: CatalogueDep, _: AdminDep
) -> dict[str, Any]:
    refuse_load_parameters((await _options(request)).get("parameters") or {})
    await load(catalogue, model)
    return {}


@router.post("/v2/repository/models/{model}/unload", summary="Unload the model (admin)")
async def unload_model(
    model: str, request: Request, catalogue: CatalogueDep, _: AdminDep
) -> dict[str, Any]:
    await _options(request)  # unload_dependents: inferhub models have no dependents
    await unload(catalogue, model)
    return {}
