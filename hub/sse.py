"""The SSE response: a plain ASGI streaming response, leaner than sse-starlette's.

sse-starlette runs three tasks per stream (the body, a ping timer, a disconnect listener) and
sends each event on its own. Here the request's own task writes, each time, everything that is
pending as one body chunk (each event's frame encoded once for all streams, hub/frames.py); one
task waits for the client to leave; the pings ride on the fan-out's heartbeat (``Tick``); and
only a write whose socket buffer is full arms a timer (hub/wire.py): a client that stopped
reading is cut after ``slow_s``, unsent bytes and all.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from contract.events import Event
from hub import frames
from hub.delivery import Reset
from hub.eventsource import MEDIA_TYPE
from hub.fanout import SlowConsumer, Tick
from hub.wire import Wire

log = logging.getLogger(__name__)

RETRY_MS = 1000
SLICE_BYTES = 64 * 1024
OPENING = b": inferhub events\r\nretry: %d\r\n\r\n" % RETRY_MS
PING = b": ping\r\n\r\n"
RESET = b'event: reset\r\ndata: {"reason": "events after your Last-Event-ID are no longer kept: reload the state"}\r\n\r\n'


class EventStream(Response):
    """Batches of events (``service.follow``/``feed``) as a ``text/event-stream``."""

    media_type = MEDIA_TYPE

    def __init__(self, batches: AsyncIterator[Sequence[Any]], slow_s: float) -> None:
        # as a StreamingResponse starts: no body, so no content-length
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
        self.batches = batches
        self.slow_s = slow_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
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
            await self._stream(scope, send)
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

    async def _stream(self, scope: Scope, send: Send) -> None:
        wire = Wire.of(scope)
        write = _Writer(scope, send, wire, self.slow_s)
        if not await write(OPENING):
            return
        try:
            async for batch in self.batches:
                if not await write(*(_encode(item) for item in batch)):
                    return
        except SlowConsumer as exc:
            close = orjson.dumps({"reason": str(exc)})
            await write(b"event: close\r\ndata: %s\r\n\r\n" % close)
        await send({"type": "http.response.body", "body": b""})


def _encode(item: Event | Reset | Tick) -> bytes:
    if isinstance(item, Event):
        return frames.sse(item)
    return RESET if isinstance(item, Reset) else PING


class _Writer:
    """Writes frames in chunks of about SLICE_BYTES (a large frame in slices: a client that
    reads slowly holds one slice of it here, whatever its size), each once there is room."""

    def __init__(self, scope: Scope, send: Send, wire: Wire | None, slow_s: float) -> None:
        self.scope = scope
        self.send = send
        self.wire = wire
        self.slow_s = slow_s

    async def __call__(self, *chunks: bytes) -> bool:
        """False once the client was cut for not reading."""
        pending: list[bytes | memoryview] = []
        size = 0
        for chunk in chunks:
            if len(chunk) > SLICE_BYTES:
                if not await self._flush(pending):
                    return False
                view = memoryview(chunk)
                for start in range(0, len(view), SLICE_BYTES):
                    if not await self._flush([view[start : start + SLICE_BYTES]]):
                        return False
                pending, size = [], 0
                continue
            pending.append(chunk)
            size += len(chunk)
            if size >= SLICE_BYTES:
                if not await self._flush(pending):
                    return False
                pending, size = [], 0
        return await self._flush(pending)

    async def _flush(self, pending: list[bytes | memoryview]) -> bool:
        if not pending:
            return True
        body = b"".join(pending) if len(pending) > 1 else bytes(pending[0])
        message = {"type": "http.response.body", "body": body, "more_body": True}
        if self.wire is not None:
            if await self.wire.drained(self.slow_s):
                await self.send(message)
                return True
        else:  # no view of the socket's buffer: one timer for the write
            try:
                async with asyncio.timeout(self.slow_s):
                    await self.send(message)
                return True
            except TimeoutError:
                pass
        self._cut()
        return False

    def _cut(self) -> None:
        if self.wire is not None:
            self.wire.cut()
        else:
            self.scope["app"].state.streams.cut(self.scope)
        log.info(
            "closed the event stream of %s: it read nothing for %g s",
            _peer(self.scope),
            self.slow_s,
        )


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _peer(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "a client"
