"""One Redis pub/sub subscription per hub process, handed out to local subscribers.

Subscribers register under keys (a job, a model, an owner) so that an event reaches only the
buffers that may want it. Each buffer is bounded in events and in bytes: when it is full, a newer ``progress`` event
of a job replaces the older one still waiting (progress is coalesced); other events are never
dropped, and a subscriber that stays full is marked ``stuck`` so that its transport closes it
with a reason and the client resumes from its last event id.

Delivery is at most once: pub/sub loses what is published while the connection is down. After
a reconnect every subscriber is woken with a *gap*, and re-reads the event log from its last id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from redis.exceptions import RedisError

from contract import keys
from contract.connection import connect, database
from contract.events import Event, EventType
from hub.observer import NOBODY, Observer

log = logging.getLogger(__name__)

Key = tuple[str, str]  # ("job", id) | ("model", name) | ("owner", name) | ("all", "")


class Gap:
    """Marks that events may have been lost (Redis reconnected): re-read the log."""


GAP = Gap()


class SlowConsumer(Exception):
    """The subscriber's buffer stayed full for too long."""


class Subscription:
    """One subscriber's buffer, bounded in events and in bytes."""

    def __init__(
        self,
        match: Callable[[Event], bool],
        maxsize: int,
        stuck_after_s: float,
        max_bytes: int = 32 * 1024 * 1024,
        observer: Observer = NOBODY,
    ) -> None:
        self.match = match
        self.observer = observer
        self.maxsize = maxsize
        self.max_bytes = max_bytes
        self.stuck_after_s = stuck_after_s
        self.keys: set[Key] = set()
        self.coalesced = 0
        self.dropped = 0
        self.bytes = 0  # of the events waiting in the buffer
        self._full_since: float | None = None
        self._stuck = False
        self._buffer: deque[Any] = deque()
        self._ready = asyncio.Event()

    def put(self, item: Any) -> None:
        """Queue an event (coalescing progress when full) or any other item. Nothing is dropped
        while the subscriber keeps up; once it is stuck its buffer is emptied and nothing more
        is queued (memory stays bounded): it is closed at its next read and resumes from its
        last event id. One event larger than the byte bound still passes an empty buffer."""
        if self._stuck:
            self._drop(isinstance(item, Event))
            return
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
                        return
            now = time.monotonic()
            self._full_since = self._full_since or now
            if (
                now - self._full_since > self.stuck_after_s
                or len(self._buffer) > 4 * self.maxsize
                or self.bytes > 4 * self.max_bytes
            ):
                self._give_up()
                self._drop(isinstance(item, Event))
                return
        self._buffer.append(item)
        self.bytes += _size(item)
        self._ready.set()

    def _give_up(self) -> None:
        self._stuck = True
        self._drop(sum(isinstance(x, Event) for x in self._buffer))
        self._buffer.clear()
        self.bytes = 0
        self._ready.set()

    def _drop(self, count: int) -> None:
        if count:
            self.dropped += count
            self.observer.events_dropped(count)

    async def get(self, wait_s: float | None = None) -> Any:
        """The next item, or None after ``wait_s`` seconds. Raises SlowConsumer when stuck."""
        while not self._buffer and not self._stuck:
            self._ready.clear()
            try:
                async with asyncio.timeout(wait_s):
                    await self._ready.wait()
            except TimeoutError:
                return None
        if self._stuck:
            raise SlowConsumer(
                f"the client read too slowly: its buffer ({self.maxsize} events, "
                f"{self.max_bytes // 1024} KiB) stayed full for over {self.stuck_after_s:g} s; "
                "resume from the last event id"
            )
        item = self._buffer.popleft()
        self.bytes -= _size(item)
        if isinstance(item, Event):
            self.observer.events_delivered(1)
        if len(self._buffer) <= self.maxsize // 2 and self.bytes <= self.max_bytes // 2:
            self._full_since = None
        return item


def _size(item: Any) -> int:
    return item.size if isinstance(item, Event) else 0


class Fanout:
    def __init__(
        self,
        redis_url: str,
        *,
        maxsize: int = 256,
        max_bytes: int = 32 * 1024 * 1024,
        stuck_after_s: float = 30.0,
        observer: Observer = NOBODY,
    ) -> None:
        self.observer = observer
        # its own client, without retries: a dropped connection must surface here, so that
        # subscribers learn of the gap (redis-py would otherwise resubscribe silently)
        self.redis = connect(redis_url, retry=False)
        self.maxsize = maxsize
        self.max_bytes = max_bytes
        self.stuck_after_s = stuck_after_s
        self._subs: dict[Key, set[Subscription]] = {}
        self._handlers: dict[bytes, Callable[[bytes], None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self.connected = False

    async def start(self) -> None:
        self._task = asyncio.create_task(self._read_forever(), name="fanout")
        # wait for the first subscription so that no event published after start is missed
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self._subscribed.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.redis.aclose()

    def listen(self, channel: str, handler: Callable[[bytes], None]) -> None:
        """Hand every message of ``channel`` to ``handler`` (on this one subscription: a hub
        holds one pub/sub connection). Call before ``start``."""
        self._handlers[channel.encode()] = handler

    def open(self, match: Callable[[Event], bool] = lambda _: True) -> Subscription:
        return Subscription(match, self.maxsize, self.stuck_after_s, self.max_bytes, self.observer)

    def add(self, sub: Subscription, *keys_: Key) -> None:
        for key in keys_:
            self._subs.setdefault(key, set()).add(sub)
            sub.keys.add(key)

    def remove(self, sub: Subscription, *keys_: Key) -> None:
        for key in keys_ or tuple(sub.keys):
            subs = self._subs.get(key)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subs[key]
            sub.keys.discard(key)

    @contextlib.asynccontextmanager
    async def subscribe(
        self, *keys_: Key, match: Callable[[Event], bool] = lambda _: True
    ) -> AsyncIterator[Subscription]:
        sub = self.open(match)
        self.add(sub, *keys_)
        try:
            yield sub
        finally:
            self.remove(sub)

    def dispatch(self, event: Event) -> None:
        self.observer.event_received(event)
        for sub in self._targets(event):
            if sub.match(event):
                sub.put(event)

    def _targets(self, event: Event) -> Iterable[Subscription]:
        found: set[Subscription] = set()
        for key in (
            ("job", event.job_id),
            ("model", event.model),
            ("owner", event.owner),
            ("all", ""),
        ):
            found.update(self._subs.get(key, ()))
        return found

    async def _read_forever(self) -> None:
        backoff = 0.05
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                channel = keys.events_channel(database(self.redis))
                await pubsub.subscribe(channel, *self._handlers)
                if self._subscribed.is_set():
                    self._signal_gap()  # events published while we were away are in the logs
                self._subscribed.set()
                self.connected = True
                backoff = 0.05
                async for message in pubsub.listen():
                    self._handle(message)
            except (RedisError, OSError) as exc:
                self.connected = False
                log.warning("event subscription lost (%s); reconnecting in %.2fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    def _signal_gap(self) -> None:
        self.observer.subscription_gap()
        for sub in {s for subs in self._subs.values() for s in subs}:
            sub.put(GAP)

    def _handle(self, message: dict[str, Any]) -> None:
        if message.get("type") != "message":
            return
        handler = self._handlers.get(message["channel"])
        if handler is not None:
            handler(message["data"])
            return
        event_id, _, raw = message["data"].partition(b" ")
        try:
            event = Event.from_wire(event_id.decode(), raw)
        except Exception:
            log.exception("dropping an undecodable event %r", event_id)
            return
        self.dispatch(event)
