"""The delivery engine: the events one subscriber may see, in order, none lost, none twice.

Every consumer (an SSE stream, a WebSocket, a request waiting for its job) holds one
``Delivery``. It follows *topics* (a job, a model, a filtered feed). A topic is routed through
the process's fan-out first, then its stored events are replayed from the client's last id in
pages, then live events follow, de-duplicated by id per topic (per pool for a feed: ids of two
pools' logs do not compare). After a gap (Redis reconnected) every topic re-reads its log from
the last id it delivered (a feed: each pool from its own, ``position.Position``).

An SSE stream of a feed sends a resume token as each event's id (hub/frames.py): while the
subscriber is in step with the fan-out (``_Following.synced``: every event up to the fan-out's
position at this one delivered or not for it, none beyond) the event goes out as it is, its
frame shared; otherwise as ``Resumed``, with the subscriber's own position.

Which tenant's events may reach the subscriber is decided here, in ``visible``, once, for
replayed and live events alike; transports only turn what ``get`` returns into frames.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import AsyncIterator, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Protocol

from contract import keys
from contract.events import TERMINAL, Event, stream_key
from contract.jobstore import JobStore
from contract.position import Position
from hub import frames
from hub.fanout import Fanout
from hub.subscription import Gap, Key, SlowConsumer

CLOCK_SKEW_MS = 1000
"""How far behind this process's clock a Redis server's may be: a feed followed from now
re-reads, after a gap, a pool's log from this long before it started."""

PAGE_BYTES = 4 * 1024 * 1024
"""A replay reads the log in pages of about this size, so a long replay holds one at a time."""


def _anything(_: Event) -> bool:
    return True


@dataclass(frozen=True, slots=True)
class Topic:
    """What a subscriber follows: its fan-out routes, where its stored events are, and which
    of the events it takes."""

    routes: tuple[Key, ...]
    job_id: str | None = None  # its stored events are the job's stream; None: the pools' logs
    accepts: Callable[[Event], bool] = _anything

    @classmethod
    def job(cls, job_id: str) -> Topic:
        return cls((("job", job_id),), job_id, lambda e: e.job_id == job_id)

    @classmethod
    def model(cls, name: str) -> Topic:
        return _model_topic(name)


@functools.lru_cache(maxsize=1024)
def _model_topic(name: str) -> Topic:
    """One topic for all the subscribers of a model (a dashboard fleet follows a few models)."""
    return Topic((("model", name),), None, lambda e: e.model == name)


class Sink(Protocol):
    """A transport that can write what the delivery hands it synchronously (hub/outbox.py)."""

    resume_tokens: bool
    """Whether a feed's events need their resume token (``Resumed`` when not shared)."""

    def ready(self) -> bool:
        """Whether it may write now: its writer idle, its socket with room."""
        ...

    def send(self, items: list[Any]) -> bool:
        """Take items from the front, leaving those its writer must handle; True if it is
        to be flushed (Fanout.later)."""
        ...

    def flush(self) -> None:
        """Write what it took."""
        ...


_WAKE = object()
"""Wakes a writer for what the sink left to it."""


@dataclass(frozen=True)
class Reset:
    """The events after the topic's last id are no longer kept: the client must reload."""

    topic: Hashable


@dataclass(frozen=True)
class Done:
    """The topic's job has ended and its terminal event was delivered: nothing more comes."""

    topic: Hashable


@dataclass(frozen=True, slots=True)
class Resumed:
    """A feed's event with the subscriber's own resume token (``position.Position``), for a
    subscriber that is not where the fan-out is."""

    event: Event
    token: str

    @property
    def size(self) -> int:
        return self.event.size


@dataclass(slots=True)
class _Following:
    topic: Topic
    last: tuple[int, int]  # the id of the last event delivered for this topic
    # a feed (no job): the id of the last event delivered per pool, from ``last`` on
    pools: dict[str, tuple[int, int]] | None
    finished: bool  # the job had ended when the topic was followed
    page: int = 64  # events per replay page, sized by the last page read
    since: tuple[int, int] = (0, 0)  # a feed from now: where a gap's replay starts at least
    # a feed: in step with the fan-out, its position that of the last event dispatched
    synced: bool = False


@dataclass(frozen=True)
class _Replay:
    name: Hashable
    after: str
    check_log: bool  # say Reset when the logs no longer hold ``after``
    pool: str | None = None  # a feed's replay of this pool's log only
    until: str = "+"  # the last id to replay (a pool newly read: what came before it)


class Delivery:
    """One subscriber's events (see the module's docstring). ``owner`` None is an admin, who
    sees every tenant's events."""

    __slots__ = (
        "_following",
        "_out",
        "_replays",
        "_sink",
        "fanout",
        "owner",
        "store",
        "sub",
        "tokens",
    )

    def __init__(self, store: JobStore, fanout: Fanout, owner: str | None) -> None:
        self.store = store
        self.fanout = fanout
        self.owner = owner
        self.sub = fanout.open(owner)  # the fan-out routes only what the owner may see
        self._following: dict[Hashable, _Following] = {}
        self._out: list[Any] = []  # lists: most of the time both are empty
        self._replays: list[_Replay] = []
        self._sink: Sink | None = None
        self.tokens = False  # a feed's events go out with their resume token (SSE)

    def visible(self, event: Event) -> bool:
        return self.owner is None or event.owner == self.owner

    def __len__(self) -> int:
        return len(self._following)

    def __contains__(self, name: Hashable) -> bool:
        return name in self._following

    def follow(
        self, name: Hashable, topic: Topic, after: str | None = None, *, finished: bool = False
    ) -> None:
        """Follow ``topic`` under ``name``: its stored events after ``after`` first (None: only
        what happens from now on), then the live ones. ``finished`` says the job has already
        ended, so that a replay past its terminal event ends the topic."""
        pools: dict[str, tuple[int, int]] | None = None
        if topic.job_id is not None:
            last = stream_key(after or "0")
        else:  # a feed resumes from a position per pool (position.Position)
            position = Position.parse(after or "0")
            last, pools = position.base, dict(position.pools)
        if (before := self._following.get(name)) is not None:
            # followed again: what was delivered stays delivered
            last = max(last, before.last)
            if pools is not None:
                for pool, seen in (before.pools or {}).items():
                    pools[pool] = max(pools.get(pool, last), seen)
        # from now: where the fan-out is, with nothing to replay
        self._following[name] = _Following(topic, last, pools, finished, synced=after is None)
        if pools is not None and after is None:
            # a gap's replay of a feed from now starts a little before now, for the servers'
            # clocks (which stamp the ids) may be behind this one's
            self._following[name].since = (int(time.time() * 1000) - CLOCK_SKEW_MS, 0)
        self.fanout.add(self.sub, *topic.routes)
        if after is not None:
            # queued behind the live events already waiting, ahead of those still to come:
            # the replay happens in order, and what it gives, the live events after it skip
            self.sub.put(_Replay(name, after, check_log=topic.job_id is None))

    def drop(self, name: Hashable) -> bool:
        following = self._following.pop(name, None)
        if following is None:
            return False
        still = {r for f in self._following.values() for r in f.topic.routes}
        self.fanout.remove(self.sub, *(r for r in following.topic.routes if r not in still))
        return True

    def attach(self, sink: Sink) -> None:
        """Let the fan-out write live events through ``sink`` while nothing waits before them:
        the writer task is woken only for what the sink cannot write at once."""
        self._sink = sink
        self.tokens = sink.resume_tokens
        self.sub.direct = self._direct

    def _direct(self, event: Event) -> bool:
        sink = self._sink
        if self._out or self._replays or sink is None or not sink.ready():
            return False
        self._deliver(event, live=True)  # visibility, de-duplication, the end of a job
        if self._out:
            if sink.send(self._out):
                self.fanout.later(sink)
            if self._out:
                self.sub.put(_WAKE)
        return True

    def put(self, message: Any) -> None:
        """Queue a message of the transport's own (a reply), in order with the events."""
        self.sub.put(message)

    def close(self) -> None:
        self.fanout.remove(self.sub)
        self.sub.direct = self._sink = None
        self._following.clear()

    async def get(self, wait_s: float | None = None) -> Any:
        """The next Event, Reset, Done or queued message; None after ``wait_s`` seconds
        with nothing. Raises SlowConsumer once the subscriber fell too far behind."""
        deadline = None if wait_s is None else time.monotonic() + wait_s
        while not self._out:
            if self._replays:
                await self._replay_page()
                continue
            item = self.sub.poll()
            if item is None:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                item = await self.sub.get(remaining)
                if item is None:
                    return None
            self._take(item)
        return self._out.pop(0)

    async def batch(self, wait_s: float | None = None, most_bytes: int = 64 * 1024) -> list[Any]:
        """What ``get`` would return next, with all that follows it at once up to about
        ``most_bytes`` of events (a writer sends them in one write); [] after ``wait_s``
        seconds with nothing. A replay still to read ends the batch."""
        first = await self.get(wait_s)
        if first is None:
            return []
        items = [first]
        size = first.size if isinstance(first, Event | Resumed) else 0
        while size < most_bytes:
            if self._out:
                item = self._out.pop(0)
                items.append(item)
                size += item.size if isinstance(item, Event | Resumed) else 0
                continue
            if self._replays:
                break
            try:
                taken = self.sub.poll()
            except SlowConsumer:  # what was taken goes out first; the next call raises
                break
            if taken is None:
                break
            self._take(taken)
        return items

    def _take(self, item: Any) -> None:
        if isinstance(item, Event):
            self._deliver(item, live=True)
        elif isinstance(item, _Replay):
            self._replays.append(item)
        elif item is _WAKE:
            pass  # what the sink left is in _out
        elif isinstance(item, Gap):  # what pub/sub lost while Redis was away is in the logs
            for name, following in self._following.items():
                job_id = following.topic.job_id
                if (
                    item.pool is not None
                    and job_id is not None
                    and keys.pool_of(job_id) != item.pool
                ):
                    continue  # a pool newly read: the topics of its events only
                last = f"{following.last[0]}-{following.last[1]}"
                if following.pools is not None:
                    base = max(following.last, following.since)
                    last = str(Position(base, following.pools))
                # a pool newly read: what it published before, which its log holds
                check = job_id is None and item.pool is None
                following.synced = False  # its replay may read past the fan-out
                self._replays.append(_Replay(name, last, check, item.pool, item.until))
        else:
            self._out.append(item)

    async def _replay_page(self) -> None:
        replay = self._replays[0]
        following = self._following.get(replay.name)
        if following is None:  # dropped meanwhile
            self._replays.pop(0)
            return
        job_id = following.topic.job_id
        if replay.check_log:
            if replay.after != "0" and not await self.store.log_holds(replay.after):
                self._out.append(Reset(replay.name))
            replay = self._replays[0] = _Replay(
                replay.name, replay.after, False, replay.pool, replay.until
            )
        count = following.page
        if job_id is not None:
            page = await self.store.events(job_id, replay.after, count, replay.until)
        else:
            page = await self.store.log_after(replay.after, count, replay.pool, replay.until)
        if page:
            per_event = max(1, sum(e.size for e in page) // len(page))
            following.page = max(1, min(1024, PAGE_BYTES // per_event))
        for event in page:
            if following.topic.accepts(event):
                self._deliver(event, live=False)
        if len(page) == count:
            more = (
                page[-1].id if job_id is not None else str(Position.parse(replay.after).past(page))
            )
            self._replays[0] = _Replay(replay.name, more, False, replay.pool, replay.until)
            return
        self._replays.pop(0)
        if following.finished and replay.name in self._following and job_id is not None:
            self._end(replay.name)  # resumed after the terminal event: nothing more will come

    def _deliver(self, event: Event, *, live: bool) -> None:
        """Pass the event on once, if it is visible and new to a topic that accepts it; end
        the topics of its job if it is the job's last. (Run per subscriber and event: lean.)"""
        if not self.visible(event):
            return
        key = frames.key(event)
        fresh = False
        feed = None
        ended = None
        for name, f in self._following.items():
            if f.topic.accepts(event):
                if f.pools is None:
                    if key > f.last:
                        fresh, f.last = True, key
                elif key > f.pools.get(pool := keys.pool_of(event.job_id), f.last):
                    fresh, f.pools[pool], feed = True, key, f
                if f.topic.job_id == event.job_id and event.type in TERMINAL:
                    ended = [*(ended or ()), name]
        if fresh:
            self._out.append(
                event if feed is None or not self.tokens else self._token(event, feed, live)
            )
        for name in ended or ():
            self._end(name)

    def _token(self, event: Event, f: _Following, live: bool) -> Event | Resumed:
        """The feed's event as it goes out: with the fan-out's position (the shared frame)
        while the subscriber is in step with it, else with its own."""
        assert f.pools is not None
        at = frames.position(event, every=self.owner is None) if live else None
        if at is not None and (f.synced or _caught_up(f, at)):
            f.synced = True  # from here on it gets what the fan-out dispatches, in order
            return event
        if not self.fanout.pooled and f.pools.keys() <= {keys.pool_of(event.job_id)}:
            return event  # one pool: the plain id is exact
        return Resumed(event, str(Position(f.last, f.pools)))

    def _end(self, name: Hashable) -> None:
        self.drop(name)
        self._out.append(Done(name))


def _caught_up(f: _Following, at: Position) -> bool:
    """Whether a feed's subscriber, which has every event the fan-out dispatched since it
    followed (its replay done), stands where the fan-out does: nothing beyond ``at`` in any pool,
    and the pools neither names resumed from the same base. (Once a replay is done.)"""
    assert f.pools is not None
    return f.last <= at.base and all(seen <= at.of(pool) for pool, seen in f.pools.items())


@contextlib.asynccontextmanager
async def delivery(store: JobStore, fanout: Fanout, owner: str | None) -> AsyncIterator[Delivery]:
    feed = Delivery(store, fanout, owner)
    try:
        yield feed
    finally:
        feed.close()
