"""A subscriber's buffer of events (``Subscription``), which the hub's one pub/sub reader
(``hub.fanout``) fills.

A subscriber registers under routes (a job, a model, an owner), each scoped to the tenant
whose events it may see. A subscriber whose consumer is idle may take an event at once
(``Subscription.direct``: the delivery writes it to the socket, hub/outbox.py); otherwise it
waits in a buffer bounded in events and in bytes: when it is full, a newer ``progress`` event of
a job replaces the older one still waiting (progress is coalesced); other events are never
dropped, and a subscriber that stays full is marked ``stuck`` so that its transport closes it
with a reason and the client resumes from its last event id.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from contract.events import Event, EventType
from hub.observer import NOBODY, Observer

Key = tuple[str, str]  # ("job", id) | ("model", name) | ("owner", name) | ("all", "")
Route = tuple[Key, str | None]  # a key, scoped to one tenant's events (None: every tenant's)


class Gap:
    """Marks that events may have been lost (Redis reconnected): re-read the logs; or, with
    ``pool``, that the reader has just subscribed to that pool's channels: re-read its log."""

    __slots__ = ("pool", "until")

    def __init__(self, pool: str | None = None, until: str = "+") -> None:
        self.pool = pool
        self.until = until  # the pool's last event when its channels were subscribed


GAP = Gap()


class Tick:
    """The hub's heartbeat, put to every subscriber every ``tick_s``: an SSE stream pings
    on it, so that no stream needs a timer of its own."""


TICK = Tick()


class SlowConsumer(Exception):
    """The subscriber's buffer stayed full for too long."""


class Subscription:
    """One subscriber's buffer, bounded in events and in bytes."""

    __slots__ = (
        "_buffer",
        "_full_since",
        "_stuck",
        "_waiter",
        "bytes",
        "coalesced",
        "direct",
        "dropped",
        "match",
        "max_bytes",
        "maxsize",
        "observer",
        "routes",
        "scope",
        "stuck_after_s",
    )

    def __init__(
        self,
        match: Callable[[Event], bool] | None,
        maxsize: int,
        stuck_after_s: float,
        max_bytes: int = 32 * 1024 * 1024,
        observer: Observer = NOBODY,
        scope: str | None = None,
    ) -> None:
        self.match = match  # a last filter of its own (None: all that its routes bring)
        # the consumer's fast path: takes an event now, when nothing waits before it (True)
        self.direct: Callable[[Event], bool] | None = None
        self.scope = scope  # the tenant whose events it may see (None: every tenant's)
        self.observer = observer
        self.maxsize = maxsize
        self.max_bytes = max_bytes
        self.stuck_after_s = stuck_after_s
        # a list, not a set: most subscribers follow one or two routes (a set is 216 bytes)
        self.routes: list[Route] = []
        self.coalesced = 0
        self.dropped = 0
        self.bytes = 0  # of the events waiting in the buffer
        self._full_since: float | None = None
        self._stuck = False
        # a list, not a deque: an idle subscriber's is empty and small (most are idle)
        self._buffer: list[Any] = []
        self._waiter: asyncio.Future[None] | None = None  # while its consumer waits

    def put(self, item: Any) -> bool:
        """Queue an event (coalescing progress when full) or any other item. Nothing is dropped
        while the subscriber keeps up; once it is stuck its buffer is emptied and nothing more
        is queued (memory stays bounded): it is closed at its next read and resumes from its
        last event id. One event larger than the byte bound still passes an empty buffer.
        True if the consumer took the event at once (``direct``)."""
        if self._stuck:
            self._drop(isinstance(item, Event))
            return False
        if (
            self.direct is not None
            and not self._buffer
            and isinstance(item, Event)
            and self.direct(item)
        ):
            return True  # delivered (the fan-out counts them)
        if len(self._buffer) >= self.maxsize or self.bytes >= self.max_bytes:
            if isinstance(item, Event) and item.type is EventType.PROGRESS:
                for i, queued in enumerate(self._buffer):
                    if (
                        isinstance(queued, Event)
                        and queued.type is EventType.PROGRESS
                        and queued.job_id == item.job_id
                    ):
                        self._buffer[i] = item
                        self.bytes += item.size - queued.size
                        self.coalesced += 1
                        self.observer.events_coalesced(1)
                        return False
            now = time.monotonic()
            self._full_since = self._full_since or now
            if (
                now - self._full_since > self.stuck_after_s
                or len(self._buffer) > 4 * self.maxsize
                or self.bytes > 4 * self.max_bytes
            ):
                self._give_up()
                self._drop(isinstance(item, Event))
                return False
        self._buffer.append(item)
        self.bytes += _size(item)
        self._wake()
        return False

    def _give_up(self) -> None:
        self._stuck = True
        self._drop(sum(isinstance(x, Event) for x in self._buffer))
        self._buffer.clear()
        self.bytes = 0
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _drop(self, count: int) -> None:
        if count:
            self.dropped += count
            self.observer.events_dropped(count)

    async def get(self, wait_s: float | None = None) -> Any:
        """The next item, or None after ``wait_s`` seconds. Raises SlowConsumer when stuck."""
        while not self._buffer and not self._stuck:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                if wait_s is None:  # no timer at all: most waits are for the next event
                    await self._waiter
                    continue
                try:
                    async with asyncio.timeout(wait_s):
                        await self._waiter
                except TimeoutError:
                    return None
            finally:
                self._waiter = None
        return self.poll()

    def poll(self) -> Any:
        """The next item if one waits, else None, without waiting. Raises SlowConsumer when
        stuck."""
        if self._stuck:
            raise SlowConsumer(
                f"the client read too slowly: its buffer ({self.maxsize} events, "
                f"{self.max_bytes // 1024} KiB) stayed full for over {self.stuck_after_s:g} s; "
                "resume from the last event id"
            )
        if not self._buffer:
            return None
        item = self._buffer.pop(0)
        self.bytes -= _size(item)
        if isinstance(item, Event):
            self.observer.events_delivered(1)
        if len(self._buffer) <= self.maxsize // 2 and self.bytes <= self.max_bytes // 2:
            self._full_since = None
        return item


def _size(item: Any) -> int:
    return item.size if isinstance(item, Event) else 0
