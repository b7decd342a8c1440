"""The connection under an ASGI request: uvicorn's protocol object, found once per stream.

The event writers use it for what ASGI cannot say: whether the socket's send buffer is full
(uvicorn pauses writing above 64 KiB), so that only a blocked writer arms a timer; and, where
the bytes on the wire are plain to write (a WebSocket with no extension, whose frames a server
sends unmasked; an HTTP/1.1 response in chunks), the socket itself: an event's bytes (encoded
once for every subscriber, hub/frames.py) and whatever else is pending go out in one write,
without a trip through the ASGI layers. Under a test client there is no such connection
(``Wire.of`` gives None), nor under another server: the writers then use plain ASGI sends.

A whole response (``send_whole``) goes out in one write too: uvicorn writes a response's head
and its body in two, so two TCP segments, two wake-ups of the client, two system calls.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from starlette.types import Message, Scope, Send
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle
from websockets.protocol import State

_index: dict[tuple[Any, ...], Any] = {}
"""uvicorn's open connections by client address, as last looked at."""
_seen: set[Any] = set()


def _connection(scope: Scope) -> Any | None:
    streams = getattr(scope["app"].state, "streams", None)
    connections = getattr(streams, "connections", None)
    client = tuple(scope.get("client") or ())
    if not connections or not client:
        return None
    found = _index.get(client)
    if found is None or found not in connections:  # new since the last look, or gone
        _refresh(connections)
        found = _index.get(client)
    return found


def _refresh(connections: set[Any]) -> None:
    """Index the connections opened since the last look and forget those closed: set
    operations (in C) find them, so that a burst of connects costs no loop over all of them
    in Python, and no closed connection is kept beyond the next look."""
    for gone in _seen - connections:
        _seen.discard(gone)
        if _index.get(_client(gone)) is gone:
            del _index[_client(gone)]
    for new in connections - _seen:
        _seen.add(new)
        _index[_client(new)] = new


def _client(connection: Any) -> tuple[Any, ...]:
    return tuple(getattr(connection, "client", None) or ())


class Wire:
    """One stream's connection (see the module's docstring). Make it once the response (or
    the WebSocket) has started."""

    __slots__ = ("_cycle", "_flow", "_protocol", "_transport", "_writable", "chunked", "raw")

    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol
        self._transport: asyncio.Transport = protocol.transport
        self._flow: Any = getattr(protocol, "flow", None)  # HTTP: uvicorn's FlowControl
        writable = getattr(protocol, "writable", None)  # WebSocket: an Event, clear if paused
        self._writable = writable if isinstance(writable, asyncio.Event) else None
        self._cycle = getattr(protocol, "cycle", None)  # HTTP (httptools): this response
        conn = getattr(protocol, "conn", None)
        # an HTTP/1.1 response in chunks, whose chunks we may write ourselves
        self.chunked = getattr(self._cycle, "chunked_encoding", None) is True
        # a WebSocket whose frames we may write ourselves: websockets' sans-I/O protocol,
        # with no extension (a compressed frame would be the socket's own)
        self.raw = self.chunked or (
            self._writable is not None
            and getattr(conn, "state", None) is State.OPEN
            and not getattr(conn, "extensions", True)
        )

    @classmethod
    def of(cls, scope: Scope) -> Wire | None:
        protocol = _connection(scope)
        if protocol is None or getattr(protocol, "transport", None) is None:
            return None
        return cls(protocol)

    def ready(self) -> bool:
        """``open`` and not ``paused``, in one call: asked per subscriber and event."""
        if self._transport.is_closing():
            return False
        if self.chunked:
            cycle = self._cycle
            return (
                not self._flow.write_paused
                and self._protocol.cycle is cycle
                and not cycle.response_complete
                and not cycle.disconnected
            )
        return self._writable.is_set() and self._protocol.conn.state is State.OPEN  # type: ignore[union-attr]

    @property
    def paused(self) -> bool:
        """The socket's send buffer is over uvicorn's high-water mark."""
        if self._flow is not None:
            return bool(self._flow.write_paused)
        return self._writable is not None and not self._writable.is_set()

    @property
    def open(self) -> bool:
        """Bytes written now would reach the client as part of this stream."""
        if self._transport.is_closing():
            return False
        if self.chunked:
            cycle = self._cycle
            return (
                self._protocol.cycle is cycle
                and not cycle.response_complete
                and not cycle.disconnected
            )
        return not self.raw or self._protocol.conn.state is State.OPEN

    async def drained(self, within_s: float) -> bool:
        """Wait until the buffer is below the mark (at once if it is): False if it stayed
        over it for ``within_s`` seconds. The one timer of a writer, armed only when blocked."""
        if not self.paused:
            return True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within_s):
                if self._flow is not None:
                    await self._flow.drain()
                elif self._writable is not None:
                    await self._writable.wait()
                return True
        return False

    def write(self, data: bytes | memoryview) -> None:
        """Bytes as they go on the wire (WebSocket frames, HTTP chunks) to a ``raw`` stream
        that is ``open``."""
        self._transport.write(data)

    def cut(self) -> None:
        """Drop the connection at once, unsent bytes and all."""
        self._transport.abort()


def response_cycle(send: Send) -> RequestResponseCycle | None:
    """uvicorn's HTTP/1.1 response (its httptools protocol) if ``send`` is its own ``send``
    (no layer wraps it), for ``send_whole``; None under another server or a test client."""
    cycle = getattr(send, "__self__", None)
    return cycle if type(cycle) is RequestResponseCycle else None


async def send_whole(cycle: RequestResponseCycle, start: Message, body: Message) -> None:
    """Send a response's start and its one body message (``more_body`` false) as uvicorn
    sends them (its checks, its keep-alive, its state), their bytes in one write: uvicorn
    writes to the cycle's transport, lent a stand-in meanwhile that gathers them. Neither send
    waits unless the socket's buffer is full: then nothing is lent (they go as uvicorn sends
    them), so that no one else meets the stand-in while they wait."""
    transport = cycle.transport
    gathered = _Gathered()
    if not cycle.flow.write_paused:
        cycle.transport = gathered  # type: ignore[assignment]  # write and close are all it uses
    try:
        await cycle.send(start)  # type: ignore[arg-type]  # uvicorn types its messages narrower
        await cycle.send(body)  # type: ignore[arg-type]
    finally:
        cycle.transport = transport
        gathered.flush(transport)


class _Gathered:
    """What uvicorn's response cycle does with its transport while it sends (``send_whole``)."""

    __slots__ = ("closed", "parts")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.parts.append(data)

    def close(self) -> None:
        self.closed = True

    def flush(self, transport: asyncio.Transport) -> None:
        """Write what was gathered in one write, then close if asked (a close sends what is
        buffered first)."""
        if self.parts and not transport.is_closing():
            transport.write(b"".join(self.parts))
        if self.closed:
            transport.close()
