"""One Redis pub/sub subscription per hub process, handed out to local subscribers.

Subscribers (``hub.subscription``) register under keys (a job, a model, an owner), each scoped
to the tenant whose events they may see (None: an admin, who sees all), so that an event's
subscribers are found in one index by its job, model and owner, without testing every
subscriber.

Delivery is at most once: pub/sub loses what is published while the connection is down. After
a reconnect every subscriber is woken with a *gap*, and re-reads the event log from its last id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

from redis.exceptions import RedisError

from contract import keys
from contract.channels import Subscriber
from contract.connection import connect, database
from contract.events import Event, published_events, stream_key
from contract.position import Position
from hub import frames
from hub.observer import NOBODY, Observer
from hub.subscription import GAP, TICK, Gap, Key, Route, Subscription, Tick

log = logging.getLogger(__name__)

DISCOVER_S = 1.0
"""How often the reader looks for new pools (``keys.POOLS``) to subscribe to."""


class Fanout:
    def __init__(
        self,
        redis_url: str,
        *,
        maxsize: int = 256,
        max_bytes: int = 32 * 1024 * 1024,
        stuck_after_s: float = 30.0,
        tick_s: float = 15.0,
        observer: Observer = NOBODY,
    ) -> None:
        self.observer = observer
        self.tick_s = tick_s
        # its own client, without retries: a dropped connection must surface here, so that
        # subscribers learn of the gap (redis-py would otherwise resubscribe silently)
        self.redis = connect(redis_url, retry=False)
        self.maxsize = maxsize
        self.max_bytes = max_bytes
        self.stuck_after_s = stuck_after_s
        self._subs: dict[Route, dict[Subscription, None]] = {}  # ordered, for a stable fan-out
        self._handlers: dict[bytes, Callable[[bytes], None]] = {}
        self._gap_handlers: list[Callable[[], None]] = []
        self._channels: list[str] = []  # those of ``listen``
        self._pool_handlers: list[tuple[Callable[[str, int], str], Callable[[bytes], None]]] = []
        self._pools: set[str] = set()  # whose channels are read
        self._wanted: set[str] = set()  # of ``ensure``: to read, in keys.POOLS or not yet
        self._discovered = asyncio.Event()
        self._ready: dict[str, asyncio.Event] = {}  # set once the pool's channels are read
        self._tasks: list[asyncio.Task[None]] = []
        self._later: list[Any] = []  # sinks to flush once this turn's dispatching is done
        self._subscribed = asyncio.Event()
        self.connected = False
        # each pool's log as far as this hub has read it (from where its channels were read,
        # past every event dispatched): where a subscriber that has every event up to the one
        # it is sent stands in the all-jobs feed (hub/frames.py, ``feed_sse``). An admin's
        # counts every tenant's events; a tenant's, its own only: its ids tell nothing of the
        # others' events
        self.position = Position()
        self._reached = Position()  # where each pool's channels began to be read
        self._owned: dict[str, Position] = {}

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._read_forever(), name="fanout"),
            asyncio.create_task(self._tick_forever(), name="fanout-tick"),
        ]
        # wait for the first subscription so that no event published after start is missed
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self._subscribed.wait()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.redis.aclose()

    def listen(
        self,
        channel: str,
        handler: Callable[[bytes], None],
        on_gap: Callable[[], None] | None = None,
    ) -> None:
        """Hand every message of ``channel`` to ``handler`` (on this one subscriber: a hub
        holds one pub/sub connection per master), and call ``on_gap`` once the subscription
        is back after a loss (messages published meanwhile were not heard). Call before
        ``start``."""
        self._handlers[channel.encode()] = handler
        self._channels.append(channel)
        if on_gap is not None:
            self._gap_handlers.append(on_gap)

    def listen_pools(
        self, channel_of: Callable[[str, int], str], handler: Callable[[bytes], None]
    ) -> None:
        """Hand every message of each pool's ``channel_of(pool, database)`` to ``handler``.
        Call before ``start``."""
        self._pool_handlers.append((channel_of, handler))

    def watch(self, pool: str) -> None:
        """Look for new pools now (a job of a pool this hub does not read yet): a pool of
        ``keys.POOLS`` is subscribed soon, then its subscribers re-read its log, so that
        nothing published before is missed. A job id's pool is not trusted: a client may name
        any, and only pools that have had a job are read."""
        if pool not in self._pools:
            self._discovered.set()

    def open(self, scope: str | None = None) -> Subscription:
        """A buffer for a subscriber who may see the events of tenant ``scope`` (None: all)."""
        return Subscription(
            None, self.maxsize, self.stuck_after_s, self.max_bytes, self.observer, scope
        )

    def add(self, sub: Subscription, *keys_: Key) -> None:
        for key in keys_:
            if key[0] == "job":
                self.watch(keys.pool_of(key[1]))
            route = (key, sub.scope)
            self._subs.setdefault(route, {})[sub] = None
            if route not in sub.routes:
                sub.routes.append(route)

    def remove(self, sub: Subscription, *keys_: Key) -> None:
        for route in [(k, sub.scope) for k in keys_] if keys_ else list(sub.routes):
            subs = self._subs.get(route)
            if subs is not None:
                subs.pop(sub, None)
                if not subs:
                    del self._subs[route]
            if route in sub.routes:
                sub.routes.remove(route)

    def later(self, sink: Any) -> None:
        """Flush ``sink`` (a delivery's, hub/outbox.py) once the events read in this turn of
        the loop are all dispatched: one write per socket for all of them."""
        self._later.append(sink)
        if len(self._later) == 1:
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        sinks, self._later = self._later, []
        for sink in sinks:
            sink.flush()

    @property
    def pooled(self) -> bool:
        """Whether this hub reads several pools' logs, whose ids do not compare."""
        return len(self._pools) > 1

    def dispatch(self, event: Event) -> None:
        self.observer.event_received(event)
        self.position = self.position.past((event,))
        owned = self._owned.get(event.owner, self._reached).past((event,))
        self._owned[event.owner] = owned
        if self.pooled:  # else plain ids are exact
            frames.stamp(event, self.position, owned)
        # a copy: a subscriber that takes the event at once may end its topic, and leave
        delivered = 0
        for sub in tuple(self._targets(event)):
            if sub.match is None or sub.match(event):
                delivered += sub.put(event)
        if delivered:
            self.observer.events_delivered(delivered)

    def _targets(self, event: Event) -> Iterable[Subscription]:
        """The subscribers of the event's job, model and owner that may see it: the routes of
        its tenant's subscribers and of the admins'."""
        subs = self._subs
        owner = event.owner
        found: list[dict[Subscription, None]] = []
        for route in (
            (("job", event.job_id), owner),
            (("job", event.job_id), None),
            (("model", event.model), owner),
            (("model", event.model), None),
            (("owner", owner), owner),
            (("all", ""), None),
        ):
            if (group := subs.get(route)) is not None:
                found.append(group)
        if len(found) == 1:  # the common case: no subscriber to be met twice
            return found[0]
        return {sub: None for group in found for sub in group}

    async def _read_forever(self) -> None:
        backoff = 0.05
        while True:
            try:
                async with Subscriber(self.redis) as channels:
                    self._pools = set()
                    await channels.subscribe(*self._channels)
                    await self._subscribe_pools(channels, await self._known_pools())
                    for pool in sorted(self._pools):  # nothing is dispatched until the loop below
                        self._reach(pool, await self._log_end(pool))
                    if self._subscribed.is_set():
                        self._signal_gap()  # events published while we were away are in the logs
                    self._subscribed.set()
                    for pool in self._pools:
                        self._ready.pop(pool, asyncio.Event()).set()
                    self.connected = True
                    backoff = 0.05
                    discovering = asyncio.create_task(self._discover_forever(channels))
                    try:
                        channels.deliver_to(self._handle)  # in the reading task: no hop
                        await channels.until_lost()
                    finally:
                        discovering.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await discovering
            except (RedisError, OSError) as exc:
                self.connected = False
                log.warning("event subscription lost (%s); reconnecting in %.2fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def _known_pools(self) -> set[str]:
        found = await self.redis.smembers(keys.POOLS)  # type: ignore[misc]  # redis-py types sync and async as one
        return {p.decode() for p in found} | self._wanted

    async def _subscribe_pools(self, channels: Subscriber, pools: set[str]) -> None:
        """Read the channels of ``pools`` from now on: their events and the per-pool
        channels of ``listen_pools``."""
        db = database(self.redis)
        names = []
        for pool in sorted(pools - self._pools):
            names.append(keys.events_channel(pool, db))
            for channel_of, handler in self._pool_handlers:
                channel = channel_of(pool, db)
                self._handlers[channel.encode()] = handler
                names.append(channel)
        if names:
            await channels.subscribe(*names)
        self._pools |= pools
        self._wanted -= self._pools

    async def _replay_before(self, pools: set[str]) -> None:
        """What the new ``pools`` published before their channels were read (their logs up
        to their last event now; what comes later comes live) is re-read by the subscribers
        following them. A pool whose log is empty (a new one) had nothing to miss."""
        for pool in sorted(pools):
            last = await self._log_end(pool)
            if last is not None:
                self._put_all(Gap(pool, last))
            self._reach(pool, last)  # behind the gap, for every subscriber
        for pool in pools:
            self._ready.pop(pool, asyncio.Event()).set()

    async def _log_end(self, pool: str) -> str | None:
        """The id of the pool's last event now (None: its log is empty)."""
        last = await self.redis.xrevrange(keys.events_log(pool), count=1)
        return last[0][0].decode() if last else None

    def _reach(self, pool: str, log_end: str | None) -> None:
        """Name the pool in the positions from where its channels are read: what its log held
        then was published before (a subscriber has it from its replay, or followed later)."""
        end = stream_key(log_end) if log_end else (0, 0)

        def moved(position: Position) -> Position:
            return Position(position.base, {**position.pools, pool: max(end, position.of(pool))})

        self._reached, self.position = moved(self._reached), moved(self.position)
        self._owned = {owner: moved(position) for owner, position in self._owned.items()}

    async def ensure(self, pool: str, timeout_s: float = 2.0) -> None:
        """Return once the pool's channels are read (before a job of a pool this hub has not
        seen is created, so that its events come live). After ``timeout_s`` it returns
        anyway: the subscription goes on, and a replay covers what it missed."""
        if pool in self._pools:
            return
        ready = self._ready.setdefault(pool, asyncio.Event())
        self._wanted.add(pool)  # a pool of the catalogue: trusted
        self._discovered.set()
        try:
            async with asyncio.timeout(timeout_s):
                await ready.wait()
        except TimeoutError:  # said, for a subscription that never comes hides well
            log.warning("pool %r: its channels are still not read after %.1fs", pool, timeout_s)

    async def _discover_forever(self, channels: Subscriber) -> None:
        """Subscribe to the pools that appear (``keys.POOLS``, or a job of a pool this hub
        has not seen: ``watch``), then have every subscriber re-read its logs, which hold what
        was published before the subscription."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DISCOVER_S):
                    await self._discovered.wait()
            self._discovered.clear()
            try:
                new = await self._known_pools() - self._pools
                if new:
                    await self._subscribe_pools(channels, new)
                    await self._replay_before(new)
            except (RedisError, OSError) as exc:
                log.warning("could not subscribe to new pools (%s); trying again", exc)

    def _signal_gap(self) -> None:
        self.observer.subscription_gap()
        self._put_all(GAP)
        for on_gap in self._gap_handlers:
            on_gap()

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            self._put_all(TICK)

    def _put_all(self, item: Gap | Tick) -> None:
        for sub in {s: None for subs in self._subs.values() for s in subs}:
            sub.put(item)

    def _handle(self, channel: bytes, data: bytes) -> None:
        handler = self._handlers.get(channel)
        if handler is not None:
            handler(data)
            return
        for event_id, raw in published_events(data):
            try:
                event = Event.from_wire(event_id, raw)
            except Exception:
                log.exception("dropping an undecodable event %r", event_id)
                continue
            self.dispatch(event)
