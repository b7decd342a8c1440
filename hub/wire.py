"""The connection under an ASGI request: uvicorn's protocol object, found once per stream.

The event writers use it for what ASGI cannot say: whether the socket's send buffer is full
(uvicorn pauses writing above 64 KiB), so that only a blocked writer arms a timer; and, for a
WebSocket with no extension, the socket itself, so that an event's frame (encoded once for
every subscriber, hub/frames.py) and whatever else is pending go out in one write, without a
message's trip through the ASGI layers. Under a test client there is no such connection
(``Wire.of`` gives None) and the writers use plain ASGI sends.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from starlette.types import Scope
from websockets.protocol import State

_index: dict[tuple[Any, ...], Any] = {}
"""uvicorn's open connections by client address, rebuilt when a lookup misses."""


def _connection(scope: Scope) -> Any | None:
    streams = getattr(scope["app"].state, "streams", None)
    connections = getattr(streams, "connections", None)
    client = tuple(scope.get("client") or ())
    if not connections or not client:
        return None
    found = _index.get(client)
    if found is None or found not in connections:  # new since the last rebuild, or gone
        _index.clear()
        for connection in connections:
            _index[tuple(getattr(connection, "client", None) or ())] = connection
        found = _index.get(client)
    return found


class Wire:
    """One stream's connection (see the module's docstring)."""

    __slots__ = ("_flow", "_protocol", "_transport", "_writable", "raw")

    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol
        self._transport: asyncio.Transport = protocol.transport
        self._flow = getattr(protocol, "flow", None)  # HTTP: uvicorn's FlowControl
        writable = getattr(protocol, "writable", None)  # WebSocket: an Event, clear if paused
        self._writable = writable if isinstance(writable, asyncio.Event) else None
        conn = getattr(protocol, "conn", None)
        # a WebSocket whose frames we may write ourselves: websockets' sans-I/O protocol,
        # with no extension (a compressed frame would be the socket's own)
        self.raw = (
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

    @property
    def paused(self) -> bool:
        """The socket's send buffer is over uvicorn's high-water mark."""
        if self._flow is not None:
            return bool(self._flow.write_paused)
        return self._writable is not None and not self._writable.is_set()

    @property
    def open(self) -> bool:
        if self._transport.is_closing():
            return False
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
        """Frames, as they are, to a ``raw`` WebSocket that is still open."""
        self._transport.write(data)

    def cut(self) -> None:
        """Drop the connection at once, unsent bytes and all."""
        self._transport.abort()
