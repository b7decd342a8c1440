"""The SSE ids of the all-jobs feed (hub/frames.py): on a hub of several pools, the fan-out's
position at each event (over every tenant's events for an admin, over the tenant's own for a
tenant), in one frame shared by every subscriber in step with it; on a hub of one pool, the
plain ids. The fan-out is not started: the test dispatches the events itself,
and nothing reaches Redis (tests/test_pools.py resumes such ids on a real stack)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from redis.asyncio import Redis

from contract.events import Event, EventType
from contract.jobstore import JobStore, Limits
from hub import frames
from hub.delivery import Delivery, Topic
from hub.fanout import Fanout


class BusyStream:
    """An SSE stream's sink whose writer is busy: what comes is left for ``batch``."""

    resume_tokens = True

    def ready(self) -> bool:
        return False

    def send(self, items: list[Any]) -> bool:
        raise AssertionError("not ready: nothing is sent")

    def flush(self) -> None:
        raise AssertionError("not ready: nothing is flushed")


@contextlib.asynccontextmanager
async def feeds(
    owners: list[str | None], *pools: str
) -> AsyncIterator[tuple[Fanout, list[Delivery]]]:
    """SSE feeds of every job the ``owners`` may see (None: an admin), from now, on a fan-out
    that reads ``pools``."""
    redis = Redis.from_url("redis://127.0.0.1:1")  # never connected: live events only
    fanout = Fanout("redis://127.0.0.1:1")
    fanout._pools = set(pools)  # as if it had subscribed to their channels
    made = [Delivery(JobStore(redis, Limits(ttl_s=60)), fanout, owner) for owner in owners]
    for feed, owner in zip(made, owners, strict=True):
        feed.attach(BusyStream())
        feed.follow("feed", Topic(((("owner", owner) if owner else ("all", "")),)))
    try:
        yield fanout, made
    finally:
        for feed in made:
            feed.close()
        await fanout.redis.aclose()
        await redis.aclose()


def _event(job_id: str, event_id: str, owner: str = "o") -> Event:
    return Event(id=event_id, job_id=job_id, type=EventType.QUEUED, ts=0.0, model="m", owner=owner)


async def test_feeds_in_step_with_the_fan_out_share_one_frame_whose_id_is_its_position() -> None:
    async with feeds([None] * 3, "b", "c") as (fanout, made):
        before = frames.ENCODED.copy()
        fanout.dispatch(_event("b.1", "5-0"))
        fanout.dispatch(_event("c.1", "3-0"))  # another log, another clock: an older id
        got = [await feed.batch(0) for feed in made]
        assert all(type(item) is Event for items in got for item in items)
        sent = [[frames.feed_sse(item, every=True) for item in items] for items in got]
        assert [frame.split(b"\n")[0] for frame in sent[0]] == [
            b"id: 0-0,b:5-0",
            b"id: 0-0,b:5-0,c:3-0",
        ]
        # the same bytes for every stream
        assert all(a is b for stream in sent for a, b in zip(stream, sent[0], strict=True))
        assert frames.ENCODED - before == {"sse": 2}  # once per event, for all three


async def test_a_feed_of_one_pool_keeps_plain_ids() -> None:
    async with feeds([None, "o"], "b") as (fanout, made):
        event = _event("b.1", "5-0")
        fanout.dispatch(event)
        for feed in made:
            every = feed.owner is None
            assert [frames.feed_sse(item, every) for item in await feed.batch(0)] == [event.sse]
        assert event.sse.startswith(b"id: 5-0\n")


async def test_a_tenants_ids_tell_nothing_of_the_other_tenants_events() -> None:
    async with feeds(["o", "p", None], "b", "c") as (fanout, (o, p, admin)):
        fanout.dispatch(_event("c.1", "3-0", owner="p"))
        fanout.dispatch(_event("b.1", "5-0", owner="o"))
        fanout.dispatch(_event("c.2", "6-0", owner="p"))
        ids = {
            name: [frames.feed_sse(item, feed.owner is None).split(b"\n")[0] for item in items]
            for name, feed in {"o": o, "p": p, "admin": admin}.items()
            if (items := await feed.batch(0))
        }
        assert ids == {
            "o": [b"id: 0-0,b:5-0"],
            "p": [b"id: 0-0,c:3-0", b"id: 0-0,c:6-0"],
            "admin": [b"id: 0-0,c:3-0", b"id: 0-0,b:5-0,c:3-0", b"id: 0-0,b:5-0,c:6-0"],
        }
