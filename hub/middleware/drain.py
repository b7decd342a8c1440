"""Graceful shutdown of a hub: stop accepting, end every live stream as documented, exit in time.

On SIGTERM (or Ctrl-C) ``inferhub serve``:

1. stops listening; a request that still arrives on a kept-alive connection gets ``503`` with
   ``Connection: close`` and ``Retry-After``, so a load balancer moves on to another replica;
2. ends each open SSE stream with ``retry: 1000`` and an ``event: close`` whose data says why:
   the client reconnects (through the load balancer, to another replica) with its
   ``Last-Event-ID`` and misses nothing;
3. closes each WebSocket with code ``1001`` (going away): the client reconnects and
   resubscribes with its ``last_event_id``;
4. lets requests in flight (a ``Prefer: wait``, a V2 inference) finish, and cancels whatever is
   still running when ``INFERHUB_SHUTDOWN_GRACE_S`` is spent; the jobs themselves live on in
   Redis and on the workers.

``Streams`` is the registry of open SSE streams and WebSockets (also counted by the metrics);
``Drain`` is the ASGI middleware that fills it and can end a stream from outside the route;
``hub/server.py`` runs the steps above before uvicorn's own shutdown (which would close
WebSockets with 1012 and cut SSE streams without a word).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import orjson
from starlette.types import ASGIApp as App
from starlette.types import Message, Receive, Scope, Send

from contract.logs import request_jobs
from hub.eventsource import MEDIA_TYPE, come_back, is_event_source

log = logging.getLogger(__name__)

CLOSE_GOING_AWAY = 1001
RETRY_MS = 1000
REASON = "the server is shutting down; reconnect with your last event id"

_SSE_FAREWELL = come_back(RETRY_MS, REASON)


class _Stream:
    """One HTTP request or WebSocket as the app sees it: its ``send`` and ``receive`` pass
    through, and ``end()`` finishes it for the client, then tells the app the peer left.

    One lives as long as its connection, so it holds as little as it can: no event of its own
    (the drain waits on the registry), and its one waiting receiver, not a set of them."""

    __slots__ = (
        "_body_read",
        "_idle",
        "_receive",
        "_receivers",
        "_send",
        "_sending",
        "_stopped",
        "ended",
        "kind",
        "live",
        "started",
    )

    def __init__(self, kind: str, receive: Receive, send: Send) -> None:
        self.kind = kind  # "http" until its response turns out to be SSE, or "websocket"
        self.started = False  # the response (or the WebSocket handshake) began
        self.live = False  # an SSE response started, or a WebSocket accepted, and not done
        self.ended = False  # ended by us: the app's later sends go nowhere
        self._receive = receive
        self._send = send
        # the app's sends in flight, and what end() waits on until there are none (no lock
        # per stream: end() is the only one that waits, once)
        self._sending = 0
        self._idle: asyncio.Future[None] | None = None
        self._body_read = kind == "websocket"
        self._stopped = False  # end() ran: a receive returns the peer's leaving at once
        self._receivers: list[asyncio.Task[Any]] = []  # tasks waiting in receive (one, mostly)

    async def send(self, message: Message) -> None:
        kind = message["type"]
        self.started = True
        if kind == "http.response.start":
            content_type = dict(message.get("headers", ())).get(b"content-type", b"")
            if content_type.startswith(b"text/event-stream"):
                self.kind, self.live = "sse", True
        elif kind == "websocket.accept":
            self.live = True
        if self.ended:
            return
        self._sending += 1
        try:
            await self._send(message)
        finally:
            self._sending -= 1
            if not self._sending and self._idle is not None and not self._idle.done():
                self._idle.set_result(None)
        if kind == "websocket.close" or (
            kind == "http.response.body" and not message.get("more_body", False)
        ):
            self.live = False

    async def receive(self) -> Message:
        if not self._body_read:  # reading the request body: nothing to race
            message = await self._receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                self._body_read = True
            return message
        if self._stopped:
            return self._gone()
        # end() cancels the wait of a task waiting here (no task per receive to race it: a
        # V2 request waits here for its client's disconnect, thousands a second)
        task = asyncio.current_task()
        assert task is not None
        self._receivers.append(task)
        try:
            return await self._receive()
        except asyncio.CancelledError:
            # end() canceled every task waiting here when it stopped the stream
            if not self._stopped or task.uncancel():
                raise  # canceled by someone else (too)
            return self._gone()
        finally:
            self._receivers.remove(task)

    def _gone(self) -> Message:
        if self.kind == "websocket":
            return {"type": "websocket.disconnect", "code": CLOSE_GOING_AWAY}
        return {"type": "http.disconnect"}

    async def end(self, timeout_s: float) -> None:
        """Say goodbye to the client (SSE farewell, or WebSocket close 1001), then stop."""
        try:
            async with asyncio.timeout(timeout_s):
                ended, self.ended = self.ended, True  # the app's sends from now on go nowhere
                while self._sending:  # not in the middle of another frame
                    self._idle = asyncio.get_running_loop().create_future()
                    await self._idle
                if self.live and not ended:
                    if self.kind == "sse":
                        await self._send(
                            {"type": "http.response.body", "body": _SSE_FAREWELL, "more_body": True}
                        )
                        await self._send({"type": "http.response.body", "body": b""})
                    else:
                        await self._send(
                            {"type": "websocket.close", "code": CLOSE_GOING_AWAY, "reason": REASON}
                        )
        except Exception as exc:  # a client that does not read, or is gone: cut below
            log.info("could not say goodbye to a %s client: %r", self.kind, exc)
            self.ended = True
        finally:
            self.live = False
            self._stopped = True
            for task in self._receivers:
                task.cancel()


class Streams:
    """The open SSE streams and WebSockets of one app, and the switch that drains them."""

    def __init__(self) -> None:
        self.closing = False
        self._all: set[_Stream] = set()
        self._draining: set[_Stream] = set()  # live when the drain began, their routes running
        self._returned: asyncio.Event | None = None  # ... set once every one of them returned
        self.connections: set[Any] = set()  # uvicorn's, once a Server runs the app

    def connection(self, scope: Scope) -> Any | None:
        """uvicorn's protocol object serving ``scope`` (None under a test client)."""
        client = tuple(scope.get("client") or ())
        for connection in list(self.connections):
            if client and tuple(getattr(connection, "client", None) or ()) == client:
                return connection
        return None

    async def drained(self, scope: Scope) -> None:
        """Wait until the WebSocket of ``scope`` has written what it was given: uvicorn hands a
        whole message to the socket's buffer at once and waits only before the next one, so
        a client that stopped reading after a large message would otherwise go unnoticed."""
        writable = getattr(self.connection(scope), "writable", None)
        if isinstance(writable, asyncio.Event):
            await writable.wait()

    def cut(self, scope: Scope) -> None:
        """Drop the connection of ``scope`` at once, unsent bytes and all: closing it politely
        would keep those bytes in the hub until a client that stopped reading goes away."""
        connection = self.connection(scope)
        if connection is not None:
            connection.transport.abort()

    def open(self, kind: str) -> int:
        """How many SSE streams (``"sse"``) or WebSockets (``"websocket"``) are open."""
        return sum(1 for s in self._all if s.live and s.kind == kind)

    async def drain(self, timeout_s: float) -> None:
        """Refuse new requests, end every live stream, and wait (at most ``timeout_s``) until
        the routes behind them have returned."""
        self.closing = True
        live = [s for s in self._all if s.live]
        if live:
            log.info(
                "shutting down: closing %d SSE stream(s) and %d WebSocket(s)",
                sum(s.kind == "sse" for s in live),
                sum(s.kind == "websocket" for s in live),
            )
        self._draining = set(live)
        self._returned = returned = asyncio.Event()
        if not live:
            returned.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await asyncio.gather(*(s.end(min(1.0, timeout_s)) for s in live))
                await returned.wait()

    def add(self, stream: _Stream) -> None:
        self._all.add(stream)

    def discard(self, stream: _Stream) -> None:
        """The route behind ``stream`` returned."""
        self._all.discard(stream)
        if stream in self._draining:
            self._draining.discard(stream)
            if not self._draining and self._returned is not None:
                self._returned.set()


class Drain:
    """ASGI middleware: registers each request and WebSocket in ``streams``; once the
    shutdown began, refuses new ones (``503``; a WebSocket handshake is denied)."""

    def __init__(self, app: App, streams: Streams) -> None:
        self.app = app
        self.streams = streams

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if self.streams.closing:
            await refuse(kind, send, scope)
            return
        stream = _Stream(kind, receive, send)
        self.streams.add(stream)
        try:
            await self.app(scope, stream.receive, stream.send)
        except asyncio.CancelledError:
            # the grace is spent and uvicorn cancels what still runs: answer a request that
            # has no answer yet with a 503 that says where its job is, not uvicorn's bare 500
            if not (self.streams.closing and kind == "http" and not stream.started):
                raise
            await refuse(kind, send, scope, cut=True)
        finally:
            self.streams.discard(stream)


async def refuse(kind: str, send: Send, scope: Scope, *, cut: bool = False) -> None:
    if kind == "websocket":
        await send({"type": "websocket.close", "code": CLOSE_GOING_AWAY, "reason": REASON})
        return
    if not cut and is_event_source(scope):
        # a 503 would close a browser's EventSource for good: it gets the farewell of the
        # streams that were open, and reconnects (elsewhere) after `retry`
        headers = [(b"content-type", MEDIA_TYPE.encode()), (b"connection", b"close")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": _SSE_FAREWELL})
        return
    message = REASON
    jobs = request_jobs() if cut else []
    if cut:
        message = "the server shut down before the answer was ready; " + (
            f"job {jobs[0]} goes on: GET /v1/jobs/{jobs[0]}" if jobs else "retry"
        )
    body = orjson.dumps({"error": {"code": "shutting_down", "message": message}})
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        (b"retry-after", b"1"),
        *([(b"location", f"/v1/jobs/{jobs[0]}".encode())] if jobs else []),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})
