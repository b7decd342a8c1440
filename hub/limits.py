"""Request bodies: a plain ASGI middleware that refuses those over a size limit with 413, and
decoding the large ones in a thread, off the event loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hub.errors import HubError, error_response
from hub.responses import JSON


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _error(self) -> HubError:
        return HubError(
            413,
            "body_too_large",
            f"the request body is over {self.max_bytes} bytes; send fewer rows",
        )

    def _response(self, scope: Scope) -> JSON:
        err = self._error()
        if scope["path"].startswith("/v2/"):  # the V2 protocol's error shape, as Triton's
            return JSON({"error": err.message}, status_code=err.status)
        return error_response(err.status, err.code, err.message)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._response(scope)(scope, receive, send)
            return
        seen = 0
        over = False  # the body went over the limit
        started = False  # the app's response started before that
        replaced = False  # the app's response is being replaced by the 413

        async def limited() -> Message:
            nonlocal seen, over
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                over = True
                raise self._error()
            return message

        async def guarded(message: Message) -> None:
            # FastAPI turns an error raised while it parses the body into its own 400 ("There
            # was an error parsing the body"): once the body went over the limit, answer 413.
            nonlocal started, replaced
            if replaced:
                return
            if over and not started:
                replaced = True
                await self._response(scope)(scope, receive, send)
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, limited, guarded)


# Above this, decoding a body takes long enough (tens of ms for JSON) to stall every other
# connection of the process: it runs in a thread, and the event loop keeps answering.
OFF_LOOP_BYTES = 1024 * 1024

P = ParamSpec("P")
R = TypeVar("R")


async def decode_body(heavy: bool, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """``fn(*args, **kwargs)``, in a thread when ``heavy`` (a body over ``OFF_LOOP_BYTES``)."""
    if heavy:
        return await run_in_threadpool(fn, *args, **kwargs)
    return fn(*args, **kwargs)
