"""``/v2``: the KServe V2 / Triton HTTP protocol, so that ``tritonclient[http]`` works unchanged.

Only conversion lives here: the wire format is ``codec`` (and ``compression``), the model's
metadata and config are ``config``, and an inference is one job of the same service ``/v1``
uses (visible in ``/v1/jobs``), awaited through the fan-out and canceled when nobody will read
its answer (``wait``). Every error is answered as Triton does by the route class (``errors``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute

from contract.errors import (
    MethodNotAllowed,
    NotFound,
    Unavailable,
)
from contract.settings import Settings
from contract.tensors import unpack_tensor
from hub import bodies
from hub.api.health import probe_workers
from hub.catalogue import Catalogue
from hub.deps import CatalogueDep, ReaderDep, authenticate, first_header
from hub.errors import error_responses
from hub.offload import OFF_LOOP_BYTES, decode_body
from hub.service import JobService
from hub.v2 import classification, codec, compression, config, openapi, repository, stats
from hub.v2.errors import SCHEMA, V2Route
from hub.v2.lean import LeanRoute
from hub.v2.paths import model_route
from hub.v2.raw import parse_any
from hub.validation import check_declared, check_parameters
from hub.wait import canceled_if_the_client_leaves

router = APIRouter(
    tags=["v2"],
    route_class=V2Route,
    responses=error_responses(400, 401, 403, 404, 405, 413, 499, 500, 503, schema=SCHEMA),
)


def _model_route(method: str, suffix: str, summary: str, **options: Any) -> Callable[[Any], Any]:
    """Register the endpoint at ``/v2/models/{model}`` and ``.../versions/{version}``."""
    return model_route(router, method, suffix, summary, **options)


# --- health and metadata ---------------------------------------------------------------------


# The bodies are the Open Inference Protocol's ({"live": true}...): Triton's clients read only
# the status, KServe's read the body.


@router.get("/v2/health/live", summary="The hub process is alive")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/v2/health/ready", summary="Redis is reachable and a worker is alive")
async def ready(catalogue: CatalogueDep) -> dict[str, bool]:
    workers = await probe_workers(catalogue)
    if isinstance(workers, str):
        raise Unavailable(f"not ready: Redis is unreachable: {workers}", "not_ready")
    if not workers:
        raise Unavailable("not ready: no worker is alive", "not_ready")
    return {"ready": True}


@router.get("/v2/", include_in_schema=False)  # as the OIP's YAML writes the path
@router.get("/v2", summary="Server metadata")
async def server_metadata(request: Request) -> dict[str, Any]:
    return {"name": "inferhub", "version": request.app.version, "extensions": config.EXTENSIONS}


async def _require_ready(catalogue: Catalogue, entry: dict[str, Any]) -> None:
    if not await catalogue.serving(entry["name"]):
        raise Unavailable(
            f"model '{entry['name']}' is not ready: {config.not_ready_reason(entry)}",
            "model_not_ready",
        )


@_model_route("GET", "", "Model metadata")
async def model_metadata(
    model: str, catalogue: CatalogueDep, _: ReaderDep, version: str | None = None
) -> dict[str, Any]:
    entry, version = await catalogue.model(model, version)
    return config.metadata(entry, version)


@_model_route("GET", "/ready", "The model can serve now (a live worker has it)")
async def model_ready(
    model: str, catalogue: CatalogueDep, _: ReaderDep, version: str | None = None
) -> dict[str, Any]:
    entry, _version = await catalogue.model(model, version)
    await _require_ready(catalogue, entry)
    return {"name": entry["name"], "ready": True}


@_model_route("GET", "/config", "Model configuration, as Triton's JSON config")
async def model_config(
    model: str, catalogue: CatalogueDep, _: ReaderDep, version: str | None = None
) -> dict[str, Any]:
    entry, version = await catalogue.model(model, version)
    return config.triton_config(entry, version)


# --- inference -------------------------------------------------------------------------------


def hub_priority(triton: int) -> int:
    """Triton's priority (0 the default, 1 the highest, then 2...) as the service's (-100..100,
    0 the default, higher sooner): level 1 is 100, level 101 the default, 201 and on -100."""
    if triton == 0:
        return 0
    return max(-100, min(100, 101 - triton))


@_model_route(
    "POST",
    "/infer",
    "Run the model on the request's inputs",
    route_class_override=LeanRoute,
    openapi_extra=openapi.INFER_REQUEST,
    responses=openapi.INFER_RESPONSES,
)
async def infer(request: Request, model: str, version: str | None = None) -> Response:
    # a lean route (the hot path): the caller, service and settings read here, not solved
    caller = (await authenticate(request)).need("submit")
    service: JobService = request.app.state.service
    settings: Settings = request.app.state.settings
    entry, version = await service.catalogue.model(model, version)
    raw = await bodies.whole(request)
    encoding = first_header(request.scope, b"content-encoding")

    def inspect(declared: codec.Declared) -> None:
        check_parameters(declared.parameters, settings.max_parameters_bytes)
        for tensor in declared.inputs:
            check_declared(entry, version, tensor.name, tensor.datatype, tensor.shape)

    def decode(raw: bytes) -> codec.InferRequest:
        body = compression.decompress(raw, encoding, settings.max_body_bytes)
        length = first_header(request.scope, codec.HEADER_LENGTH_KEY)
        parsed = parse_any(body, length, inspect, entry, version)  # length 0: a raw body
        codec.require_text(parsed.arrays)
        return parsed

    # a compressed body's size says nothing of the decoded one's: it is decoded in a thread too
    heavy = not compression.is_identity(encoding) or len(raw) > OFF_LOOP_BYTES
    parsed = await decode_body(heavy, decode, raw)
    wanted = [o.name for o in parsed.outputs] if parsed.outputs else None
    timeout_s = parsed.timeout_us / 1e6 if parsed.timeout_us else None
    async with canceled_if_the_client_leaves(request) as client:
        outputs = await service.infer(
            entry,
            version,
            parsed.arrays,
            owner=caller.tenant,
            outputs=wanted,
            priority=hub_priority(parsed.priority),
            timeout_s=timeout_s,
            declared=True,  # ``inspect`` checked each tensor as declared: not again
        )
    if client.left:
        return Response(status_code=499)  # the client left; nobody reads this answer
    header: dict[str, Any] = {"model_name": entry["name"], "model_version": version}
    if parsed.id is not None:
        header["id"] = parsed.id
    accept = first_header(request.scope, b"accept-encoding")
    return _answer(header, parsed, outputs, accept, entry.get("labels") or [])


def _answer(
    header: dict[str, Any],
    parsed: codec.InferRequest,
    packed_outputs: list[dict[str, Any]],
    accept: str | None,
    labels: list[str],
) -> Response:
    """The outputs, each binary or JSON as asked: its own ``binary_data``, else the request's
    ``binary_data_output``; classified when asked."""
    asked = {o.name: o for o in parsed.outputs or []}
    outputs: list[codec.Output] = []
    for packed in packed_outputs:
        name, wanted = packed["name"], asked.get(packed["name"])
        binary = wanted.binary if wanted else None
        binary = parsed.binary_output if binary is None else binary
        if not binary and not (wanted and wanted.classification):
            outputs.append(codec.json_tensor(packed))  # read from its bytes, no array made
            continue
        array = unpack_tensor(packed)
        if wanted and wanted.classification:
            array = classification.top(array, wanted.classification, labels, name)
        outputs.append((name, array, binary))
    content, header_length = codec.encode_response(header, outputs)
    content, encoding = compression.compress(content, accept)
    headers = {}
    if header_length is not None:
        headers[codec.HEADER_LENGTH] = str(header_length)
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    media_type = "application/octet-stream" if header_length is not None else "application/json"
    return Response(content, media_type=media_type, headers=headers)


@router.api_route(
    "/v2/{path:path}",
    methods=["GET", "POST", "PUT", "DELETE", "PATCH"],
    include_in_schema=False,
)
async def unknown(request: Request, path: str) -> Response:
    """Unknown ``/v2`` routes (statistics, shared memory, model load...) in Triton's shape; a
    known route asked with the wrong method is 405, as anywhere else."""
    allowed = sorted(
        method
        for route in (*router.routes, *stats.router.routes, *repository.router.routes)
        if isinstance(route, APIRoute)
        and route.endpoint is not unknown
        and route.path_regex.match(request.url.path)
        for method in route.methods or ()
    )
    if allowed:
        raise MethodNotAllowed(
            f"{request.method} is not allowed here", headers={"Allow": ", ".join(allowed)}
        )
    raise NotFound(f"{request.method} /v2/{path} is not a route of inferhub")
