"""What is read of jobs in Redis: records, stored outputs, event streams and logs, listings.

The write side, the scripts that move a record, its event log and its queue entry together, is
``contract/jobstore.py``, whose ``JobStore`` reads through this class. Listings and the
all-jobs feed merge every pool's index and log (a reader's place in them: ``Position``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis

from contract import keys, records
from contract.events import Event, stream_key
from contract.position import Position


class JobReads:
    """Jobs as Redis holds them. Methods are one round trip each unless they say otherwise."""

    def __init__(self, redis: Redis, log_maxlen: int) -> None:
        self.redis = redis
        self.log_maxlen = log_maxlen  # a pool's log is capped at this many events
        self._pools: set[str] = set()  # the pools this process knows are in keys.POOLS

    async def pools(self) -> list[str]:
        """Every pool that has had a job, sorted."""
        found = await self.redis.smembers(keys.POOLS)  # type: ignore[misc]
        self._pools.update(p.decode() for p in found)
        return sorted(self._pools)

    async def outputs(self, job_id: str) -> bytes | None:
        """The job's stored outputs (contract/outputs.py), or None (none yet, or expired)."""
        blob: bytes | None = await self.redis.get(keys.job_outputs(job_id))
        return blob

    async def chunks(self, job_id: str, starts: Sequence[int]) -> list[bytes | None]:
        """The stored chunks of a job that streams its outputs, from these rows."""
        found: list[bytes | None] = await self.redis.mget(
            [keys.job_outputs_chunk(job_id, start) for start in starts]
        )
        return found

    async def get(self, job_id: str) -> dict[str, Any] | None:
        raw = await self.redis.hgetall(keys.job(job_id))  # type: ignore[misc]  # redis-py types sync and async as one
        return records.decode(raw) if raw else None

    async def get_many(self, job_ids: Sequence[str]) -> list[dict[str, Any] | None]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(keys.job(job_id))
            raws = await pipe.execute()
        return [records.decode(raw) if raw else None for raw in raws]

    async def recent_ids(
        self, owner: str | None, before: tuple[float, str] | None, count: int
    ) -> list[tuple[str, float]]:
        """Up to ``count`` ids of the owner's jobs (None: every job) older than ``before``
        (creation ms, job id), newest first, merged from every pool's index.

        Jobs created in the same millisecond share a score; Redis orders those by id, so the
        id breaks the tie and a page boundary between them loses none.
        """
        top = "+inf" if before is None else before[0]
        pools = await self.pools()
        async with self.redis.pipeline(transaction=False) as pipe:
            for pool in pools:
                index = keys.jobs_index(pool) if owner is None else keys.owner_jobs(pool, owner)
                pipe.zrevrangebyscore(index, top, "-inf", start=0, num=count + 16, withscores=True)
            pages = await pipe.execute()
        found = [(job_id.decode(), score) for rows in pages for job_id, score in rows]
        if before is not None:
            found = [
                (j, s) for j, s in found if s < before[0] or (s == before[0] and j < before[1])
            ]
        found.sort(key=lambda row: (row[1], row[0]), reverse=True)
        return found[:count]

    async def log_after(
        self, after: str, count: int | None = None, pool: str | None = None, until: str = "+"
    ) -> list[Event]:
        """Events of every pool's log (of ``pool``'s only, when given) after the position
        ``after`` (a token, ``Position``: each pool from its own id) up to ``until``, at most
        ``count``, merged in id order."""
        position = Position.parse(after)
        async with self.redis.pipeline(transaction=False) as pipe:
            for read in [pool] if pool is not None else await self.pools():
                ms, seq = position.of(read)
                pipe.xrange(keys.events_log(read), min=f"({ms}-{seq}", max=until, count=count)
            pages = await pipe.execute()
        events = [Event.from_wire(eid.decode(), body[b"e"]) for rows in pages for eid, body in rows]
        events.sort(key=lambda e: stream_key(e.id))
        if count is None or len(events) <= count:
            return events
        # a page ends before the first id it leaves out: its position is then past every
        # event of each pool up to its own last one, and none is skipped
        return events[:count]

    async def log_holds(self, after: str) -> bool:
        """Whether every event after the position ``after`` is still in the capped logs of
        the pools: one log at least reaches back to its id (else the position is older than
        all that is kept), and each log either does or was never trimmed (a pool whose first
        job came later)."""
        position = Position.parse(after)
        pools = await self.pools()
        async with self.redis.pipeline(transaction=False) as pipe:
            for pool in pools:
                pipe.xrange(keys.events_log(pool), count=1)
                pipe.xlen(keys.events_log(pool))
            found = await pipe.execute()
        logs = [
            (stream_key(first[0][0].decode()) <= position.of(pool), length < self.log_maxlen)
            for pool, first, length in zip(pools, found[::2], found[1::2], strict=True)
            if first
        ]
        return not logs or (
            any(reaches for reaches, _ in logs) and all(r or whole for r, whole in logs)
        )

    async def event(self, job_id: str, event_id: str) -> Event | None:
        """One of the job's stored events, by its id."""
        rows = await self.redis.xrange(keys.job_events(job_id), min=event_id, max=event_id)
        return Event.from_wire(event_id, rows[0][1][b"e"]) if rows else None

    async def events(
        self, job_id: str, after: str = "0", count: int | None = None, until: str = "+"
    ) -> list[Event]:
        """The job's stored events after the id ``after`` up to ``until`` (at most ``count``)."""
        rows = await self.redis.xrange(
            keys.job_events(job_id),
            min=f"({after}" if after != "0" else "-",
            max=until,
            count=count,
        )
        return [Event.from_wire(eid.decode(), body[b"e"]) for eid, body in rows]
