"""The writing end of an event stream on a socket it may write directly (hub/wire.py).

Two ways out, the same bytes:

- the stream's writer task sends what it was handed in one write (``write``), a large event in
  slices, each once the socket's buffer has room: a client that reads slowly holds one slice of
  it here, not a copy; only a writer whose buffer is full waits, under the one timer;
- while that writer is idle (waiting for the next event, nothing of its own pending) and the
  socket has room, the fan-out hands an event over as it dispatches it (``ready`` and
  ``send``, the delivery's sink): no task wakes per subscriber and event. The fan-out writes
  the bytes once it has dispatched all the events it had read (``flush``, soon after on the
  loop): a hub that falls behind sends each socket the events that piled up in one write.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hub.wire import Wire

SLICE_BYTES = 64 * 1024

Encode = Callable[[Any], bytes | None]
"""An item as the bytes that go on the wire (b"" for an item that sends nothing), or None
for one its writer must handle itself."""


class Stuck(Exception):
    """The socket's buffer stayed full: the client stopped reading."""


class Outbox:
    __slots__ = ("encode", "idle", "pending", "resume_tokens", "slow_s", "wire")

    def __init__(
        self,
        encode: Encode,
        slow_s: float,
        wire: Wire | None = None,
        *,
        resume_tokens: bool = False,
    ) -> None:
        self.encode = encode
        # a feed's events carry their resume token (SSE ids, hub/delivery.py's ``Resumed``)
        self.resume_tokens = resume_tokens
        self.slow_s = slow_s
        self.wire = wire  # a raw one, or None until known
        self.idle = False  # the writer waits for its next items
        self.pending: list[bytes] = []  # handed over by the fan-out, to write at the flush

    def ready(self) -> bool:
        """Whether the fan-out may write for this stream now."""
        wire = self.wire
        return self.idle and wire is not None and wire.ready()

    def send(self, items: list[Any]) -> bool:
        """Take the items the fan-out just delivered, from the first until one that the
        writer must handle (left in ``items`` for it) or one too large for a single write.
        True if there was nothing pending before: the fan-out is to ``flush`` it."""
        first = not self.pending
        while items:
            data = self.encode(items[0])
            if data is None or len(data) > SLICE_BYTES:
                break
            del items[0]
            if data:
                self.pending.append(data)
        return first and bool(self.pending)

    def flush(self) -> None:
        """Write what the fan-out handed over, in one write (dropped if the stream closed)."""
        pending, self.pending = self.pending, []
        if pending and self.wire is not None and self.wire.open:
            self.wire.write(b"".join(pending) if len(pending) > 1 else pending[0])

    async def write(self, parts: list[bytes]) -> bool:
        """Write the parts, in writes of about SLICE_BYTES; False if the stream closed
        meanwhile. Raises Stuck when the buffer stays full for ``slow_s``."""
        self.flush()  # what the fan-out handed over came first
        pending: list[bytes | memoryview] = []
        for data in parts:
            if len(data) > SLICE_BYTES:
                view = memoryview(data)
                pending.extend(view[i : i + SLICE_BYTES] for i in range(0, len(view), SLICE_BYTES))
            elif data:
                pending.append(data)
        chunk: list[bytes | memoryview] = []
        size = 0
        for n, piece in enumerate(pending, 1):
            chunk.append(piece)
            size += len(piece)
            if size >= SLICE_BYTES or n == len(pending):
                if not await self._room():
                    return False
                assert self.wire is not None
                self.wire.write(b"".join(chunk) if len(chunk) > 1 else chunk[0])
                chunk, size = [], 0
        return await self._room()  # a client that stopped reading is noticed now

    async def _room(self) -> bool:
        assert self.wire is not None
        if not await self.wire.drained(self.slow_s):
            raise Stuck
        return self.wire.open
