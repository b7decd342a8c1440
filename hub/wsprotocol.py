"""uvicorn's sans-I/O WebSocket protocol (the ``websockets`` library's state machine), keeping
less for each open socket.

A hub holds thousands of idle sockets, and uvicorn's protocol keeps, for each, things only the
handshake needs or that an idle socket never uses: the request's and the response's headers
(a few KiB of strings and lists, the request's twice, since the library's parser keeps its
own reference to it), and an ``asyncio.Queue`` for the client's messages (three deques and an
``Event`` with a fourth, some 3 KiB, for a queue that holds a message or two: the protocol
pauses reading until the app has taken the last one). This class empties the headers once the
handshake is answered and gives the protocol a small inbox instead of the queue; everything
else, the frames on the wire included, is uvicorn's and the library's (``hub/wire.py`` writes
frames to its socket as before). Measured with ``bench/fanout.py``: see the README.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn._types import ASGIReceiveEvent, ASGISendEvent
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol


class Inbox:
    """What the protocol uses of ``asyncio.Queue`` (``put_nowait``, ``get``, ``empty``), in
    two small lists instead of its four deques."""

    __slots__ = ("_items", "_waiters")

    def __init__(self) -> None:
        self._items: list[ASGIReceiveEvent] = []
        self._waiters: list[asyncio.Future[None]] = []

    def put_nowait(self, item: ASGIReceiveEvent) -> None:
        self._items.append(item)
        self._wake()

    async def get(self) -> ASGIReceiveEvent:
        while not self._items:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                # a message handed to this waiter goes to the next one
                if waiter.done() and not waiter.cancelled() and self._items:
                    self._wake()
                raise
            finally:
                self._waiters.remove(waiter)
        return self._items.pop(0)

    def empty(self) -> bool:
        return not self._items

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
                return


class WebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's ``websockets-sansio`` protocol with an ``Inbox`` and no headers kept past
    the handshake (see the module's docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue: Inbox = Inbox()  # type: ignore[assignment]

    async def send(self, message: ASGISendEvent) -> None:
        await super().send(message)
        if message["type"] == "websocket.accept" and self.handshake_complete:
            # the 101 is on the wire: the app has the headers in its scope
            self.request.headers.clear()
            self.response.headers.clear()
