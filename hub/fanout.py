"""One Redis pub/sub subscription per hub process, handed out to local subscribers.

Each subscriber gets a bounded buffer. When it is full, a newer ``progress`` event of a job
replaces the older one still waiting (progress is coalesced); other events are never dropped,
and a subscriber that stays full is flagged ``overflowed`` for its transport to close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from hub import keys
from hub.jobstore import Event
from hub.protocol import EventType

log = logging.getLogger(__name__)


class Subscription:
    def __init__(self, match: Callable[[Event], bool], maxsize: int) -> None:
        self.match = match
        self.maxsize = maxsize
        self.overflowed = False
        self.coalesced = 0
        self._buffer: deque[Event] = deque()
        self._ready = asyncio.Event()

    def put(self, event: Event) -> None:
        if len(self._buffer) >= self.maxsize and event.type is EventType.PROGRESS:
            for i, queued in enumerate(self._buffer):
                if queued.type is EventType.PROGRESS and queued.job_id == event.job_id:
                    self._buffer[i] = event
                    self.coalesced += 1
                    return
        self._buffer.append(event)
        if len(self._buffer) > self.maxsize:
            self.overflowed = True
        self._ready.set()

    async def get(self, wait_s: float | None = None) -> Event | None:
        """The next event, or None after ``wait_s`` seconds."""
        while not self._buffer:
            self._ready.clear()
            try:
                async with asyncio.timeout(wait_s):
                    await self._ready.wait()
            except TimeoutError:
                return None
        return self._buffer.popleft()


class Fanout:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._by_job: dict[str, set[Subscription]] = {}
        self._wide: set[Subscription] = set()
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

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

    @contextlib.asynccontextmanager
    async def subscribe(
        self,
        *,
        job_id: str | None = None,
        match: Callable[[Event], bool] = lambda _: True,
        maxsize: int = 256,
    ) -> AsyncIterator[Subscription]:
        """Events of one job (``job_id``) or of every job that ``match`` accepts."""
        sub = Subscription(match, maxsize)
        targets = self._by_job.setdefault(job_id, set()) if job_id else self._wide
        targets.add(sub)
        try:
            yield sub
        finally:
            targets.discard(sub)
            if job_id and not targets:
                self._by_job.pop(job_id, None)

    def dispatch(self, event: Event) -> None:
        for sub in (*self._by_job.get(event.job_id, ()), *self._wide):
            if sub.match(event):
                sub.put(event)

    async def _read_forever(self) -> None:
        backoff = 0.05
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(keys.EVENTS_CHANNEL)
                self._subscribed.set()
                backoff = 0.05
                async for message in pubsub.listen():
                    self._handle(message)
            except (RedisError, OSError) as exc:
                log.warning("event subscription lost (%s); reconnecting in %.2fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    def _handle(self, message: dict[str, Any]) -> None:
        if message.get("type") != "message":
            return
        event_id, _, raw = message["data"].partition(b" ")
        try:
            event = Event.from_wire(event_id.decode(), raw)
        except Exception:
            log.exception("dropping an undecodable event %r", event_id)
            return
        self.dispatch(event)
