"""``/v1/jobs``: submit, read, list and cancel jobs over HTTP."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request, Response, status
from fastapi.responses import StreamingResponse

from contract.events import JobStatus
from hub import outputs
from hub.deps import ReaderDep, ServiceDep, SettingsDep, SubmitterDep
from hub.errors import error_responses
from hub.offload import OFF_LOOP_BYTES, decode_body
from hub.schemas import JobRequest
from hub.service import FINISHED
from hub.validation import decode_inputs, parse_job_request

router = APIRouter(
    prefix="/v1/jobs",
    tags=["jobs"],
    responses=error_responses(400, 401, 403, 404, 409, 413, 422, 429, 503),
)

_WAIT = re.compile(r"(?:^|[,;\s])wait=(\d+(?:\.\d+)?)")


def _wait_seconds(prefer: str | None, most: float) -> float:
    match = _WAIT.search(prefer or "")
    return min(float(match.group(1)), most) if match else 0.0


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Submit a job",
    responses={
        200: {"description": "The finished job (with `Prefer: wait=N`, when it ended in time)"},
        202: {"description": "The queued job, with its URLs; `Location` points to it"},
        400: {"description": "The body is not valid JSON"},
        404: {"description": "Unknown model or version"},
        409: {"description": "The Idempotency-Key was used for a different request"},
        413: {
            "description": "The body is over INFERHUB_MAX_BODY_BYTES, or its `parameters` "
            "over INFERHUB_MAX_PARAMETERS_BYTES"
        },
        422: {"description": "An input's name, datatype, shape or row count is wrong"},
        503: {"description": "Redis is unreachable"},
    },
    # The body is read by the route, not by FastAPI, which would parse it before the
    # dependencies run: an unauthenticated caller is refused before a byte of it is decoded.
    openapi_extra={"requestBody": JobRequest.openapi_body()},
)
async def submit(
    request: Request,
    response: Response,
    service: ServiceDep,
    caller: SubmitterDep,
    settings: SettingsDep,
    prefer: Annotated[
        str | None, Header(description="`wait=N`: answer when done, N s at most")
    ] = None,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> dict[str, Any]:
    wait_s = _wait_seconds(prefer, settings.max_wait_s)
    raw = await request.body()
    heavy = len(raw) > OFF_LOOP_BYTES
    body = await decode_body(heavy, parse_job_request, raw, settings.max_parameters_bytes)
    model, version = await service.catalogue.model(body.model, body.version)
    arrays = await decode_body(heavy, decode_inputs, model, version, body)
    idempotency = None
    if idempotency_key:
        idempotency = (idempotency_key, await decode_body(heavy, body.fingerprint))
    job = await service.submit_arrays(
        model,
        version,
        arrays,
        owner=caller.tenant,
        outputs=body.outputs,
        priority=body.priority,
        parameters=body.parameters,
        webhook=body.webhook,
        idempotency=idempotency,
        wait_s=wait_s,
    )
    response.headers["Location"] = job["urls"]["self"]
    if job["status"] in FINISHED:
        response.status_code = status.HTTP_200_OK
    return job


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
) -> StreamingResponse:
    fmt = outputs.choose(format, request.headers.get("accept"))
    record, packed = await service.outputs(job_id, owner=caller.visible)
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
