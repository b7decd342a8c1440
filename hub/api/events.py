"""Server-Sent Events: a job's events, replayed and then live, resumable by ``Last-Event-ID``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import orjson
from fastapi import APIRouter, Header, Query
from sse_starlette import EventSourceResponse, ServerSentEvent

from hub.deps import OwnerDep, ServiceDep
from hub.jobstore import Event
from hub.service import event_view

router = APIRouter(prefix="/v1", tags=["events"])

PING_S = 15
RETRY_MS = 1000


@router.get(
    "/jobs/{job_id}/events",
    summary="Follow a job's events (SSE)",
    description="Every event of the job in order, from the start or after `Last-Event-ID`; "
    "the stream closes after the terminal event.",
    response_class=EventSourceResponse,
    responses={404: {"description": "No such job"}},
)
async def job_events(
    job_id: str,
    service: ServiceDep,
    owner: OwnerDep,
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    last_event_id: Annotated[
        str | None, Query(description="for clients that cannot set headers")
    ] = None,
) -> EventSourceResponse:
    after = last_event_id_header or last_event_id or "0"
    events = await service.follow(job_id, owner=owner, after=after)

    async def stream() -> AsyncIterator[ServerSentEvent]:
        yield ServerSentEvent(comment="following " + job_id, retry=RETRY_MS)
        async for event in events:
            yield _sse(event)

    return EventSourceResponse(stream(), ping=PING_S)


def _sse(event: Event) -> ServerSentEvent:
    view = event_view(event)
    return ServerSentEvent(data=orjson.dumps(view).decode(), event=view["type"], id=view["id"])
