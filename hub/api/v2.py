"""``/v2``: the KServe V2 / Triton HTTP protocol, so that ``tritonclient[http]`` works unchanged.

Only conversion lives here: the wire format is ``hub.v2codec``, and an inference is one job of
the same service ``/v1`` uses (visible in ``/v1/jobs``), awaited through the fan-out. Errors are
answered as Triton does, ``{"error": "message"}``, by the route class below, so that ``/v1``
keeps its own error shape.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute
from redis.exceptions import RedisError

from contract.tensors import unpack_tensor
from hub import v2codec
from hub.api.health import probe_workers
from hub.catalogue import Catalogue
from hub.deps import CatalogueDep, ReaderDep, ServiceDep, SettingsDep, SubmitterDep
from hub.errors import HubError, error_responses
from hub.offload import OFF_LOOP_BYTES, decode_body
from hub.responses import JSON
from hub.validation import check_declared, check_parameters

EXTENSIONS = ["binary_tensor_data", "model_configuration", "schedule_policy"]

# The service's statuses as Triton answers them: a request the service finds invalid (422) or
# conflicting (409) is Triton's 400; over capacity (429) is its 503.
_STATUS = {422: 400, 409: 400, 429: 503}


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSON:
    return JSON({"error": message}, status_code=status, headers=headers)


class V2Route(APIRoute):
    """A route whose errors take Triton's shape; the app's handlers keep ``/v1``'s."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except HubError as exc:
                return error(_STATUS.get(exc.status, exc.status), exc.message, exc.headers)
            except v2codec.V2Error as exc:
                return error(exc.status, str(exc))
            except RedisError:
                return error(
                    503, "the job store is unreachable; retry shortly", {"Retry-After": "1"}
                )

        return handle


# Triton's error shape: {"error": "message"}
_V2_ERROR = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
router = APIRouter(
    tags=["v2"],
    route_class=V2Route,
    responses=error_responses(400, 401, 403, 404, 405, 413, 499, 500, 503, schema=_V2_ERROR),
)


def _model_route(method: str, suffix: str, summary: str, **options: Any) -> Callable[[Any], Any]:
    """Register the endpoint at ``/v2/models/{model}`` and ``.../versions/{version}``."""

    def register(endpoint: Any) -> Any:
        for path in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            router.add_api_route(
                path + suffix, endpoint, methods=[method], summary=summary, **options
            )
        return endpoint

    return register


# --- health and metadata ---------------------------------------------------------------------


@router.get("/v2/health/live", summary="The hub process is alive", response_class=Response)
async def live() -> Response:
    return Response(status_code=200)


@router.get(
    "/v2/health/ready", summary="Redis is reachable and a worker is alive", response_class=Response
)
async def ready(catalogue: CatalogueDep) -> Response:
    workers = await probe_workers(catalogue)
    if isinstance(workers, str):
        return error(503, f"not ready: Redis is unreachable: {workers}")
    if not workers:
        return error(503, "not ready: no worker is alive")
    return Response(status_code=200)


@router.get("/v2", summary="Server metadata")
async def server_metadata(request: Request) -> dict[str, Any]:
    return {"name": "inferhub", "version": request.app.version, "extensions": EXTENSIONS}


async def _require_ready(catalogue: Catalogue, entry: dict[str, Any]) -> None:
    if not await catalogue.serving(entry["name"]):
        raise HubError(
            503,
            "model_not_ready",
            f"model '{entry['name']}' is not ready: no live worker of pool '{entry['pool']}'",
        )


@_model_route("GET", "", "Model metadata")
async def model_metadata(
    model: str, catalogue: CatalogueDep, _: ReaderDep, version: str | None = None
) -> dict[str, Any]:
    entry, version = await catalogue.model(model, version)
    signature = entry["versions"][version]
    return {
        "name": entry["name"],
        "versions": sorted(entry["versions"], key=int),
        "platform": entry["platform"],
        "inputs": signature["inputs"],
        "outputs": signature["outputs"],
    }


@_model_route(
    "GET", "/ready", "The model can serve now (a live worker has it)", response_class=Response
)
async def model_ready(
    model: str, catalogue: CatalogueDep, _: ReaderDep, version: str | None = None
) -> Response:
    entry, _version = await catalogue.model(model, version)
    await _require_ready(catalogue, entry)
    return Response(status_code=200)


@_model_route("GET", "/config", "Model configuration, as Triton's JSON config")
async def model_config(
    model: str, catalogue: CatalogueDep, _: ReaderDep, version: str | None = None
) -> dict[str, Any]:
    entry, version = await catalogue.model(model, version)
    return triton_config(entry, version)


_TYPES = {"BYTES": "TYPE_STRING"}  # the rest are "TYPE_" + the V2 datatype


def triton_config(entry: dict[str, Any], version: str) -> dict[str, Any]:
    """The model in Triton's ``model_config.proto`` JSON form.

    With ``max_batch_size > 0`` Triton leaves the batch dimension out of ``dims``; a tensor
    that is only the batch dimension becomes ``dims [1]`` reshaped to ``[]``, as Triton writes
    it. A model with a fixed first dimension cannot batch: ``max_batch_size`` 0, full dims.
    """
    signature = entry["versions"][version]
    tensors = signature["inputs"] + signature["outputs"]
    batched = all(t["shape"] and t["shape"][0] == -1 for t in tensors)

    def describe(tensor: dict[str, Any]) -> dict[str, Any]:
        dims = tensor["shape"][1:] if batched else tensor["shape"]
        out: dict[str, Any] = {
            "name": tensor["name"],
            "data_type": _TYPES.get(tensor["datatype"], "TYPE_" + tensor["datatype"]),
            "dims": dims or [1],
        }
        if not dims:
            out["reshape"] = {"shape": []}
        return out

    config: dict[str, Any] = {
        "name": entry["name"],
        "platform": entry["platform"],
        "backend": "onnxruntime",
        "version_policy": {"all": {}},
        "max_batch_size": entry["max_batch_size"] if batched else 0,
        "input": [describe(t) for t in signature["inputs"]],
        "output": [describe(t) for t in signature["outputs"]],
        "parameters": {
            "pool": {"string_value": entry["pool"]},
            "timeout_s": {"string_value": f"{entry['timeout_s']:g}"},
            "description": {"string_value": entry.get("description", "")},
            "labels": {"string_value": ",".join(entry.get("labels", []))},
        },
    }
    batching = entry.get("batching")
    if batched and batching:
        config["dynamic_batching"] = {
            "preferred_batch_size": [batching["preferred_batch_size"]],
            "max_queue_delay_microseconds": int(batching["max_queue_delay_ms"] * 1000),
        }
    return config


@router.post("/v2/repository/index", summary="Every model version and its state")
async def repository_index(
    request: Request, catalogue: CatalogueDep, _: ReaderDep
) -> list[dict[str, Any]]:
    body = await request.body()
    try:
        options = orjson.loads(body) if body.strip() else {}
    except orjson.JSONDecodeError as exc:
        raise v2codec.V2Error(f"the body is not valid JSON: {exc}") from None
    only_ready = isinstance(options, dict) and options.get("ready") is True
    workers = await catalogue.workers()
    index = []
    for name, entry in sorted((await catalogue.models()).items()):
        serving = any(name in w.get("models", ()) for w in workers)
        for version in sorted(entry["versions"], key=int):
            if serving:
                index.append({"name": name, "version": version, "state": "READY"})
            elif not only_ready:
                reason = f"no live worker of pool '{entry['pool']}'"
                index.append(
                    {"name": name, "version": version, "state": "UNAVAILABLE", "reason": reason}
                )
    return index


# --- inference -------------------------------------------------------------------------------


def hub_priority(triton: int) -> int:
    """Triton's priority (0 the default, 1 the highest, then 2...) as the service's (-100..100,
    0 the default, higher sooner): level 1 is 100, level 101 the default, 201 and on -100."""
    if triton == 0:
        return 0
    return max(-100, min(100, 101 - triton))


def _require_text(arrays: dict[str, np.ndarray]) -> None:
    """The wire carries any bytes, but onnxruntime's string tensors hold UTF-8 text only: say
    so now rather than fail the job later."""
    for name, array in arrays.items():
        if array.dtype != object:
            continue
        for i, item in enumerate(array.flat):
            try:
                item.decode()
            except UnicodeDecodeError:
                raise v2codec.V2Error(
                    f"input '{name}': BYTES element {i} is not UTF-8 text, which onnxruntime "
                    "string tensors need"
                ) from None


@_model_route("POST", "/infer", "Run the model on the request's inputs")
async def infer(
    request: Request,
    model: str,
    service: ServiceDep,
    caller: SubmitterDep,
    settings: SettingsDep,
    version: str | None = None,
) -> Response:
    entry, version = await service.catalogue.model(model, version)
    raw = await request.body()
    encoding = request.headers.get("content-encoding")

    def inspect(declared: v2codec.Declared) -> None:
        check_parameters(declared.parameters, settings.max_parameters_bytes)
        for tensor in declared.inputs:
            check_declared(entry, version, tensor.name, tensor.datatype, tensor.shape)

    def decode(raw: bytes) -> v2codec.InferRequest:
        body = v2codec.decompress(raw, encoding, settings.max_body_bytes)
        parsed = v2codec.parse_request(body, request.headers.get(v2codec.HEADER_LENGTH), inspect)
        _require_text(parsed.arrays)
        return parsed

    # a compressed body's size says nothing of the decoded one's: it is decoded in a thread too
    compressed = (encoding or "identity").strip().lower() != "identity"
    parsed = await decode_body(compressed or len(raw) > OFF_LOOP_BYTES, decode, raw)
    wanted = [o.name for o in parsed.outputs] if parsed.outputs else None
    timeout_s = parsed.timeout_us / 1e6 if parsed.timeout_us else None
    async with _canceled_if_the_client_leaves(request) as client:
        outputs = await service.infer(
            entry,
            version,
            parsed.arrays,
            owner=caller.tenant,
            outputs=wanted,
            priority=hub_priority(parsed.priority),
            timeout_s=timeout_s,
        )
    if client.left:
        return Response(status_code=499)  # the client left; nobody reads this answer
    header: dict[str, Any] = {"model_name": entry["name"], "model_version": version}
    if parsed.id is not None:
        header["id"] = parsed.id
    return _answer(header, parsed, outputs, request.headers.get("accept-encoding"))


def _answer(
    header: dict[str, Any],
    parsed: v2codec.InferRequest,
    packed_outputs: list[dict[str, Any]],
    accept: str | None,
) -> Response:
    """The outputs, each binary or JSON as asked: its own ``binary_data``, else the request's
    ``binary_data_output``."""
    asked = {o.name: o.binary for o in parsed.outputs or []}
    outputs = []
    for packed in packed_outputs:
        binary = asked.get(packed["name"])
        as_binary = parsed.binary_output if binary is None else binary
        outputs.append((packed["name"], unpack_tensor(packed), as_binary))
    content, header_length = v2codec.encode_response(header, outputs)
    content, encoding = v2codec.compress(content, accept)
    headers = {}
    if header_length is not None:
        headers[v2codec.HEADER_LENGTH] = str(header_length)
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    media_type = "application/octet-stream" if header_length is not None else "application/json"
    return Response(content, media_type=media_type, headers=headers)


@dataclass
class _Client:
    left: bool = False


@contextlib.asynccontextmanager
async def _canceled_if_the_client_leaves(request: Request) -> AsyncIterator[_Client]:
    """Run the block, canceled if the client disconnects first (``left`` then says so, and
    the cancellation ends here). A request that leaves before its batch is sent is not run."""
    client, task = _Client(), asyncio.current_task()
    assert task is not None

    async def watch() -> None:
        await _disconnected(request)
        client.left = True
        task.cancel()

    watcher = asyncio.create_task(watch())
    try:
        yield client
    except asyncio.CancelledError:
        if not client.left:
            raise
        task.uncancel()
    finally:
        watcher.cancel()


async def _disconnected(request: Request) -> None:
    # the body is read: the next message the server sends is the disconnect
    while (await request.receive())["type"] != "http.disconnect":
        pass


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
        for route in router.routes
        if isinstance(route, APIRoute)
        and route.endpoint is not unknown
        and route.path_regex.match(request.url.path)
        for method in route.methods or ()
    )
    if allowed:
        return error(405, f"{request.method} is not allowed here", {"Allow": ", ".join(allowed)})
    raise HubError(404, "not_found", f"{request.method} /v2/{path} is not a route of inferhub")
