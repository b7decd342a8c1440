"""Server-Sent Events: a job's events, and the live feed of every job the caller may see.

Both resume by ``Last-Event-ID`` (the header, or the ``last_event_id`` query parameter for
clients that cannot set headers). A job's events have their Redis stream ids; in the feed of a
hub that reads several pools, each event's id is a resume token, a position per pool
(``position.Position``), so that a browser's reconnect resumes every pool exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.routing import APIRoute
from redis.exceptions import RedisError
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from contract.errors import InferhubError, OverCapacity, Unavailable
from hub.deps import ServiceDep, SettingsDep, StreamReaderDep, authenticate
from hub.errors import error_responses, store_unreachable, v1_error
from hub.eventsource import MEDIA_TYPE, come_back, is_event_source
from hub.middleware.body_limit import refuse_oversized
from hub.sse import EventStream


class StreamRoute(APIRoute):
    """An SSE route, callable past FastAPI's routing, dependency solving and exit stacks
    (``hub/middleware/shortcut.py``): they are kept for as long as a stream is open, a few KiB
    of every idle connection. Its parameters are plain strings, so there is nothing FastAPI
    would refuse that this takes; a hub behind a root path or with tracing on takes FastAPI's
    way."""

    def path_parameters(self, scope: Scope) -> dict[str, Any] | None:
        """The path's parameters if ``scope`` is a request for this route, else None."""
        if scope["type"] != "http" or scope.get("method") != "GET" or scope.get("root_path"):
            return None
        match = self.path_regex.match(scope["path"])
        return None if match is None else match.groupdict()

    def shortcut(self) -> Callable[[Scope, Receive, Send], Coroutine[Any, Any, None]]:
        queries = _QUERIES[self.endpoint]

        async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
            request = Request(scope, receive, send)
            state = scope["app"].state
            try:
                await refuse_oversized(request)  # the app's one dependency, as on every route
                response: Response = await self.endpoint(  # what FastAPI would have solved
                    request,
                    service=state.service,
                    caller=(await authenticate(request, tickets=True)).need("read"),
                    settings=state.settings,
                    last_event_id_header=request.headers.get("last-event-id"),
                    last_event_id=request.query_params.get("last_event_id"),
                    **scope["path_params"],
                    **queries(request),
                )
            except (InferhubError, RedisError) as exc:
                response = v1_error(exc)  # as the app's handlers answer
            del request  # the stream keeps nothing of the request it does not need
            await response(scope, receive, send)

        return asgi


router = APIRouter(
    prefix="/v1",
    tags=["events"],
    responses=error_responses(400, 401, 403, 404, 422, 429, 503),
    route_class=StreamRoute,
)

LastEventHeader = Annotated[str | None, Header(alias="Last-Event-ID")]
LastEventQuery = Annotated[
    str | None, Query(description="resume after this event id (for clients without headers)")
]


@router.get(
    "/jobs/{job_id}/events",
    summary="Follow a job's events (SSE)",
    description="Every event of the job in order, from the start or after `Last-Event-ID`; "
    "the stream closes after the terminal event. A reconnect whose `Last-Event-ID` is the "
    "terminal event (or later) gets `204 No Content`: a browser's EventSource stops there.",
    response_class=EventStream,
    status_code=200,  # FastAPI reads it from the response class otherwise
    responses={
        204: {"description": "The job ended at or before `Last-Event-ID`: nothing more comes"},
        404: {"description": "No such job"},
        400: {"description": "Bad Last-Event-ID"},
    },
)
async def job_events(
    request: Request,
    job_id: str,
    service: ServiceDep,
    caller: StreamReaderDep,
    settings: SettingsDep,
    last_event_id_header: LastEventHeader = None,
    last_event_id: LastEventQuery = None,
) -> Response:
    after = last_event_id_header or last_event_id or "0"
    stream = EventStream(settings.slow_consumer_s)
    try:
        stream.batches = await service.follow(
            job_id, owner=caller.visible, after=after, sink=stream.outbox
        )
    except (OverCapacity, Unavailable, RedisError) as exc:
        return _later(request, exc)
    if stream.batches is None:
        return Response(status_code=204)
    return stream


@router.get(
    "/events",
    summary="The live events of every job you may see (SSE)",
    description="Filter with `model` and `job_id` (repeatable). With `Last-Event-ID` the feed "
    "resumes from the capped logs of the pools; an id older than the logs hold gets a `reset` "
    "event first: reload your state, events were lost. With several pools each event's `id:` "
    "is a resume token (`base,pool:id,...`): send the last one back as `Last-Event-ID`.",
    response_class=EventStream,
    status_code=200,  # FastAPI reads it from the response class otherwise
    responses={400: {"description": "Bad Last-Event-ID"}},
)
async def all_events(
    request: Request,
    service: ServiceDep,
    caller: StreamReaderDep,
    settings: SettingsDep,
    model: Annotated[list[str] | None, Query()] = None,
    job_id: Annotated[list[str] | None, Query()] = None,
    last_event_id_header: LastEventHeader = None,
    last_event_id: LastEventQuery = None,
) -> Response:
    stream = EventStream(settings.slow_consumer_s, feed=True, every=caller.visible is None)
    try:
        stream.batches = await service.feed(
            owner=caller.visible,
            models=frozenset(model or ()),
            job_ids=frozenset(job_id or ()),
            after=last_event_id_header or last_event_id,
            sink=stream.outbox,
        )
    except (OverCapacity, Unavailable, RedisError) as exc:
        return _later(request, exc)
    return stream


def _feed_queries(request: Request) -> dict[str, Any]:
    query = request.query_params
    return {"model": query.getlist("model") or None, "job_id": query.getlist("job_id") or None}


# the query parameters of each route besides ``last_event_id``, as FastAPI would read them
_QUERIES: dict[Callable[..., Any], Callable[[Request], dict[str, Any]]] = {
    job_events: lambda _: {},
    all_events: _feed_queries,
}


def _later(request: Request, exc: OverCapacity | Unavailable | RedisError) -> Response:
    """A refusal for a while (429, 503): an EventSource gets a stream that says when to come
    back instead, since a non-200 answer would close it for good (hub/eventsource.py)."""
    if not is_event_source(request.scope):
        raise exc
    error = store_unreachable() if isinstance(exc, RedisError) else exc
    retry_s = float((error.headers or {}).get("Retry-After", "1"))
    body = come_back(round(retry_s * 1000), error.message, error.code)
    return Response(body, media_type=MEDIA_TYPE, headers={"Cache-Control": "no-store"})
