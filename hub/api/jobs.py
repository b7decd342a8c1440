"""``/v1/jobs``: submit, read, list and cancel jobs over HTTP."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, Header, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from fastapi.routing import APIRoute
from redis.exceptions import RedisError
from starlette.datastructures import Headers
from starlette.types import Receive, Scope, Send

from contract.errors import InferhubError, InvalidInput, MalformedRequest
from contract.events import JobStatus
from hub import bodies, outputs
from hub.deps import ReaderDep, ServiceDep, SettingsDep, SubmitterDep, authenticate
from hub.errors import error_responses, v1_error
from hub.jobschema import Job, OnlineAnswer
from hub.jobview import FINISHED
from hub.middleware.body_limit import refuse_oversized
from hub.middleware.request_log import HOT
from hub.offload import OFF_LOOP_BYTES, decode_body
from hub.responses import JSON
from hub.schemas import JobRequest
from hub.service import JobService
from hub.v2.codec import HEADER_LENGTH, json_tensor
from hub.validation import decode_inputs, parse_job_request
from hub.wait import canceled_if_the_client_leaves

router = APIRouter(
    prefix="/v1/jobs",
    tags=["jobs"],
    responses=error_responses(400, 401, 403, 404, 409, 413, 422, 429, 503),
)


@dataclass(frozen=True)
class BinaryQuery:
    """What a binary body (V2 binary form, .npy, .npz) cannot say itself: the query's."""

    model: str | None = None
    version: str | None = None
    input: str | None = None
    outputs: str | None = None
    priority: int = 0
    stream_outputs: bool = False
    lane: Literal["jobs", "online"] = "jobs"

    def require_model(self) -> str:
        if not self.model:
            raise MalformedRequest(
                "a binary body (V2 binary form, .npy or .npz) names its model in the query: "
                "POST /v1/jobs?model=NAME",
                "model_missing",
            )
        return self.model

    def wanted(self) -> list[str] | None:
        return [o.strip() for o in self.outputs.split(",") if o.strip()] if self.outputs else None


async def binary_query(
    model: Annotated[str | None, Query(description="binary bodies: the model")] = None,
    version: Annotated[str | None, Query(description="binary bodies: the version")] = None,
    input: Annotated[str | None, Query(description="an .npy body: the input it is")] = None,
    outputs: Annotated[
        str | None, Query(description="binary bodies: the outputs wanted, comma-separated")
    ] = None,
    priority: Annotated[int, Query(ge=-100, le=100, description="binary bodies")] = 0,
    stream_outputs: Annotated[
        bool, Query(description="binary bodies: an `output` event per chunk")
    ] = False,
    lane: Annotated[
        Literal["jobs", "online"], Query(description="binary bodies: as the JSON body's `lane`")
    ] = "jobs",
) -> BinaryQuery:
    """The query of a binary body. A coroutine: FastAPI calls a plain callable (the dataclass
    itself) in its thread pool, a thread hop on every submission."""
    return BinaryQuery(model, version, input, outputs, priority, stream_outputs, lane)


BINARY_DEFAULTS = BinaryQuery()
BINARY_MEDIA = {
    bodies.NPY: "one array, numpy's .npy format, for the model's input (?input= if several)",
    bodies.NPZ: "one array per input, named as the inputs (numpy.savez)",
    "application/octet-stream": "the V2 binary tensor form, with Inference-Header-Content-Length",
}

_WAIT = re.compile(r"(?:^|[,;\s])wait=(\d+(?:\.\d+)?)")


def _wait_seconds(prefer: str | None, most: float) -> float:
    match = _WAIT.search(prefer or "")
    return min(float(match.group(1)), most) if match else 0.0


IDEMPOTENCY_KEY_MOST = 200


class SubmitRoute(APIRoute):
    """``POST /v1/jobs``, callable past FastAPI's routing and dependency solving
    (``hub/middleware/shortcut.py``) when the request is the common one: a JSON body, no
    query, and headers FastAPI would take as they are. Solving the route's parameters cost
    the hub a fifth of a small job's CPU. Any other request (a binary body, a query, an
    Idempotency-Key over its bound) takes FastAPI's way and meets its checks and messages."""

    def path_parameters(self, scope: Scope) -> dict[str, Any] | None:
        """``{}`` if ``scope`` is a request this route answers itself, else None."""
        if scope.get("method") != "POST" or scope["path"] != self.path:
            return None
        if scope.get("root_path") or scope.get("query_string"):
            return None  # a query may be a binary body's, and FastAPI validates it
        headers = Headers(scope=scope)
        if bodies.is_binary(headers.get("content-type"), headers.get(HEADER_LENGTH)):
            return None
        if len(headers.get("idempotency-key") or "") > IDEMPOTENCY_KEY_MOST:
            return None
        return {}

    def shortcut(self) -> Callable[[Scope, Receive, Send], Coroutine[Any, Any, None]]:
        async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
            request = Request(scope, receive, send)
            try:
                await refuse_oversized(request)  # the app's one dependency, as on every route
                response: Response = await submit(  # what FastAPI would have solved
                    request,
                    request.app.state.service,
                    (await authenticate(request)).need("submit"),
                    request.app.state.settings,
                    request.headers.get("prefer"),
                    request.headers.get("idempotency-key"),
                )
            except (InferhubError, RequestValidationError, RedisError) as exc:
                response = v1_error(exc)  # as the app's handlers answer
            await response(scope, receive, send)

        return asgi


async def submit(
    request: Request,
    service: ServiceDep,
    caller: SubmitterDep,
    settings: SettingsDep,
    prefer: Annotated[
        str | None, Header(description="`wait=N`: answer when done, N s at most")
    ] = None,
    idempotency_key: Annotated[str | None, Header(max_length=IDEMPOTENCY_KEY_MOST)] = None,
    binary: Annotated[BinaryQuery, Depends(binary_query)] = BINARY_DEFAULTS,
) -> Response:
    wait_s = _wait_seconds(prefer, settings.max_wait_s)
    # an .npy body's data, still arriving: stored as it comes
    incoming: dict[str, AsyncIterator[memoryview]] = {}
    if bodies.is_binary(request.headers.get("content-type"), request.headers.get(HEADER_LENGTH)):
        lane = binary.lane
        _check_lane(lane, idempotency_key, binary.stream_outputs)
        whole = bool(idempotency_key) or lane == "online"  # a fingerprint, an online batch
        form = await bodies.receive(request, settings.max_body_bytes, whole=whole)
        model, version = await service.catalogue.model(binary.require_model(), binary.version)
        signature = model["versions"][version]["inputs"]
        names = {spec["name"]: spec for spec in signature}
        arrays, incoming = bodies.name_inputs(form, names, model["name"], binary.input)
        outputs, priority = binary.wanted() or form.outputs, binary.priority
        parameters = form.parameters or None
        fingerprint = ""
        if idempotency_key and form.body is not None:
            heavy = len(form.body) > OFF_LOOP_BYTES
            fingerprint = f"{await decode_body(heavy, bodies.fingerprint, form.body)}:{binary}"
        webhook = None  # a binary body has no room for one: submit it as JSON
        stream_outputs = binary.stream_outputs
    else:
        raw = await request.body()
        heavy = len(raw) > OFF_LOOP_BYTES
        body = await decode_body(heavy, parse_job_request, raw, settings.max_parameters_bytes)
        lane = body.lane
        _check_lane(lane, idempotency_key, stream_outputs=False)  # the body's: checked
        model, version = await service.catalogue.model(body.model, body.version)
        arrays = await decode_body(heavy, decode_inputs, model, version, body)
        outputs, priority, parameters = body.outputs, body.priority, body.parameters
        webhook, stream_outputs = body.webhook, body.stream_outputs
        fingerprint = await decode_body(heavy, body.fingerprint) if idempotency_key else ""
    if lane == "online":
        return await _answer_online(
            request, service, caller.tenant, model, version, arrays, outputs, priority, wait_s
        )
    job = await service.submit_arrays(
        model,
        version,
        arrays,
        owner=caller.tenant,
        outputs=outputs,
        priority=priority,
        parameters=parameters,
        webhook=webhook,
        stream_outputs=stream_outputs,
        incoming=incoming,
        idempotency=(idempotency_key, fingerprint) if idempotency_key else None,
        wait_s=wait_s,
    )
    # rendered here: FastAPI would first copy the dict through its jsonable_encoder
    return JSON(
        job,
        status.HTTP_200_OK if job["status"] in FINISHED else status.HTTP_202_ACCEPTED,
        {"Location": job["urls"]["self"]},
    )


def _check_lane(lane: str, idempotency_key: str | None, stream_outputs: bool) -> None:
    """Refuse on the online lane what only a job has a use for, before the body is read or
    decoded."""
    if lane != "online":
        return
    if idempotency_key:
        raise InvalidInput(
            "an Idempotency-Key finds a job again, and the online lane keeps none: drop the "
            "header, or submit a job (lane 'jobs')",
            "not_online",
        )
    if stream_outputs:
        raise InvalidInput(
            "stream_outputs sends a job's events, and the online lane keeps none: drop it, or "
            "submit a job (lane 'jobs')",
            "not_online",
        )


async def _answer_online(
    request: Request,
    service: JobService,
    owner: str,
    model: dict[str, Any],
    version: str,
    arrays: dict[str, np.ndarray],
    outputs: list[str] | None,
    priority: int,
    wait_s: float,
) -> Response:
    """The lane ``online``: the request is batched and answered as ``/v2 infer`` does, within
    the model's ``timeout_s`` (or the ``Prefer: wait``, if sooner); no job is kept."""
    request.scope[HOT] = True  # as /v2 infer's: its successes are logged at DEBUG
    timeout_s = min(wait_s, float(model["timeout_s"])) if wait_s else None
    async with canceled_if_the_client_leaves(request) as client:
        packed = await service.infer(
            model,
            version,
            arrays,
            owner=owner,
            outputs=outputs,
            priority=priority,
            timeout_s=timeout_s,
        )
    if client.left:
        return Response(status_code=499)  # the client left; nobody reads this answer
    answer = {
        "model": model["name"],
        "version": version,
        "lane": "online",
        "status": JobStatus.SUCCEEDED,
        "rows": next(iter(arrays.values())).shape[0],
        "outputs": [json_tensor(tensor) for tensor in packed],
    }
    return JSON(answer)


router.add_api_route(
    "",
    submit,
    methods=["POST"],
    route_class_override=SubmitRoute,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Submit a job",
    response_model=None,  # the schema is the responses' (Job)
    responses={
        200: {
            "description": "The finished job (with `Prefer: wait=N`, when it ended in time), "
            "or on the online lane its answer",
            "model": Job | OnlineAnswer,
        },
        202: {
            "description": "The queued job, with its URLs; `Location` points to it",
            "model": Job,
        },
        400: {"description": "The body is not valid JSON"},
        404: {"description": "Unknown model or version"},
        409: {"description": "The Idempotency-Key was used for a different request"},
        413: {
            "description": "The body is over INFERHUB_MAX_BODY_BYTES, or its `parameters` "
            "over INFERHUB_MAX_PARAMETERS_BYTES"
        },
        422: {
            "description": "An input's name, datatype, shape or row count is wrong; or the "
            "online lane with a webhook, stream_outputs or an Idempotency-Key"
        },
        500: {"description": "The online lane: the model failed on this request"},
        503: {
            "description": "Redis is unreachable; the online lane: no worker serves the model, "
            "the hub holds too many rows in flight (`Retry-After`), or no answer in time"
        },
    },
    # The body is read by the route, not by FastAPI, which would parse it before the
    # dependencies run: an unauthenticated caller is refused before a byte of it is decoded.
    openapi_extra={"requestBody": JobRequest.openapi_body(binary=BINARY_MEDIA)},
)


@router.get("", summary="List jobs, newest first")
async def list_jobs(
    service: ServiceDep,
    caller: ReaderDep,
    model: str | None = None,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page")] = None,
    include: Annotated[
        Literal["outputs"] | None,
        Query(description="`outputs`: each job's inline outputs too (large ones never are)"),
    ] = None,
) -> dict[str, Any]:
    jobs, next_cursor = await service.list(
        owner=caller.visible,
        model=model,
        status=status.value if status else None,
        limit=limit,
        cursor=cursor,
        with_outputs=include == "outputs",
    )
    return {"jobs": jobs, "next_cursor": next_cursor}


@router.get("/{job_id}", summary="One job", responses={404: {"description": "No such job"}})
async def get_job(job_id: str, service: ServiceDep, caller: ReaderDep) -> dict[str, Any]:
    return await service.get(job_id, owner=caller.visible)


@router.get(
    "/{job_id}/outputs",
    summary="A succeeded job's outputs: JSON, Triton's binary form, .npy or .npz",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {media: {} for media in outputs.MEDIA.values()},
            "description": "The outputs in the format of `?format=`, else of `Accept`",
        },
        404: {"description": "No such job, or its outputs expired"},
        409: {"description": "The job has not succeeded"},
    },
)
async def job_outputs(
    job_id: str,
    request: Request,
    service: ServiceDep,
    caller: ReaderDep,
    format: Annotated[
        Literal["json", "binary", "npy", "npz"] | None,
        Query(description="overrides `Accept`"),
    ] = None,
    output: Annotated[str | None, Query(description="the output (npy: needed if several)")] = None,
    rows: Annotated[
        str | None,
        Query(
            pattern=r"^\d+:\d+$",
            description="`start:end`: those rows only; a streamed chunk's even while it runs",
        ),
    ] = None,
) -> StreamingResponse:
    fmt = outputs.choose(format, request.headers.get("accept"))
    span = None
    if rows is not None:
        start, end = (int(x) for x in rows.split(":"))
        if end <= start:
            raise InvalidInput(f"rows {rows}: the end must be past the start", "bad_rows")
        span = (start, end)
    record, packed = await service.outputs(job_id, owner=caller.visible, rows=span)
    header = {"id": job_id, "model_name": record["model"], "model_version": record["version"]}
    answer = outputs.body(fmt, packed, header, output)
    return StreamingResponse(answer.chunks, media_type=answer.media_type, headers=answer.headers)


@router.post(
    "/{job_id}/cancel",
    summary="Cancel a job",
    description="A queued job never runs; a running one stops at its next chunk.",
    responses={404: {"description": "No such job"}, 409: {"description": "Already finished"}},
)
async def cancel_job(job_id: str, service: ServiceDep, caller: SubmitterDep) -> dict[str, Any]:
    return await service.cancel(job_id, owner=caller.visible)
