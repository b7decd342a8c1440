"""The SSE response: a plain ASGI streaming response (sse-starlette, used before, ran three
tasks per stream and sent each event on its own).

The request's own task writes what is pending in one write,
through hub/outbox.py on uvicorn (each event's chunk encoded once for all streams,
hub/frames.py; live events written by the fan-out itself while the stream is idle); one task
waits for the client to leave; the pings ride on the fan-out's heartbeat (``Tick``); and only
a write whose socket buffer is full arms a timer: a client that stopped reading is cut after
``slow_s``, unsent bytes and all.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from contract.events import Event
from hub import frames
from hub.delivery import Reset, Resumed
from hub.eventsource import MEDIA_TYPE
from hub.outbox import Outbox, Stuck
from hub.subscription import SlowConsumer, Tick
from hub.wire import Wire

log = logging.getLogger(__name__)

RETRY_MS = 1000
OPENING = b": inferhub events\r\nretry: %d\r\n\r\n" % RETRY_MS
PING = b": ping\r\n\r\n"
RESET = (
    b'event: reset\r\ndata: {"reason": "events after your Last-Event-ID are no longer kept: '
    b'reload the state"}\r\n\r\n'
)


class EventStream(Response):
    """Batches of events (``service.follow``/``feed``) as a ``text/event-stream``. Make it
    first, and hand its ``outbox`` to the delivery as its sink. The all-jobs feed (``feed``;
    of ``every`` tenant's events for an admin) sends resume tokens as its events' ids
    (hub/frames.py)."""

    media_type = MEDIA_TYPE

    def __init__(self, slow_s: float, *, feed: bool = False, every: bool = False) -> None:
        # as a StreamingResponse starts: no body, so no content-length
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
        self.slow_s = slow_s
        self.frames = _Frames(feed, every)
        # its wire once the response started
        self.outbox = Outbox(self.frames.direct, slow_s, resume_tokens=True)
        self.batches: AsyncIterator[Sequence[Any]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.batches is not None, "no events to stream"
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        task = asyncio.current_task()
        assert task is not None
        streaming, gone = True, False

        def leave(_: object) -> None:  # the client left: stop the stream where it waits
            nonlocal gone
            if streaming:
                gone = True
                task.cancel()

        watcher = asyncio.ensure_future(_disconnected(receive))
        watcher.add_done_callback(leave)
        try:
            await self._stream(scope, send, self.batches)
        except asyncio.CancelledError:
            if not gone:
                raise
            task.uncancel()
        finally:
            streaming = False
            watcher.remove_done_callback(leave)
            watcher.cancel()
            if isinstance(self.batches, AsyncGenerator):  # its subscription ends now
                await self.batches.aclose()

    async def _stream(
        self, scope: Scope, send: Send, batches: AsyncIterator[Sequence[Any]]
    ) -> None:
        wire = Wire.of(scope)
        raw = wire is not None and wire.chunked
        if raw:
            self.outbox.wire = wire
        encode = self.frames.chunk if raw else self.frames.frame
        write = self.outbox.write if raw else self._sender(send, wire)
        try:
            if not await write([frames.chunk(OPENING) if raw else OPENING]):
                return
            while True:
                self.outbox.idle = True
                try:
                    batch = await anext(batches)
                except StopAsyncIteration:
                    break
                finally:
                    self.outbox.idle = False
                if not await write([encode(item) for item in batch]):
                    return
        except SlowConsumer as exc:
            close = b"event: close\r\ndata: %s\r\n\r\n" % orjson.dumps({"reason": str(exc)})
            await write([frames.chunk(close) if raw else close])
        except Stuck:
            if wire is not None:
                wire.cut()
            else:
                scope["app"].state.streams.cut(scope)
            log.info(
                "closed the event stream of %s: it read nothing for %g s", _peer(scope), self.slow_s
            )
            return
        self.outbox.flush()  # the last events the fan-out handed over, before the end
        await send({"type": "http.response.body", "body": b""})

    def _sender(self, send: Send, wire: Wire | None) -> Callable[[list[bytes]], Awaitable[bool]]:
        async def write(parts: list[bytes]) -> bool:
            """The ASGI way: one body chunk, under a timer when the buffer cannot be seen."""
            message = {"type": "http.response.body", "body": b"".join(parts), "more_body": True}
            if wire is not None:
                if not await wire.drained(self.slow_s):
                    raise Stuck
                await send(message)
                return True
            try:
                async with asyncio.timeout(self.slow_s):
                    await send(message)
            except TimeoutError:
                raise Stuck from None
            return True

        return write


@dataclass(frozen=True, slots=True)
class _Frames:
    """A stream's items as bytes: a job's events with their ids, the all-jobs feed's with
    resume tokens (of ``every`` tenant's events, or of the event's owner's)."""

    feed: bool
    every: bool

    def frame(self, item: Event | Resumed | Reset | Tick) -> bytes:
        if isinstance(item, Event):
            return frames.feed_sse(item, self.every) if self.feed else frames.sse(item)
        if isinstance(item, Resumed):
            return frames.resumed(item.event, item.token)
        return RESET if isinstance(item, Reset) else PING

    def chunk(self, item: Event | Resumed | Reset | Tick) -> bytes:
        """An item as one chunk of the response; an event's is shared by every stream."""
        if isinstance(item, Event):
            if self.feed:
                return frames.feed_sse_chunk(item, self.every)
            return frames.sse_chunk(item)
        return frames.chunk(self.frame(item))

    def direct(self, item: Any) -> bytes | None:
        """An event as the fan-out writes it (None: anything else is for the writer)."""
        return self.chunk(item) if isinstance(item, Event | Resumed) else None


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _peer(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "a client"
