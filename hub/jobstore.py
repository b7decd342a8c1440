"""The Redis data layer for jobs: records, event logs, the arq queue. Shared by hub and workers.

A job lives in three keys: its record (a hash), its event stream, and, until a worker takes it,
arq's job key and queue entry. Every state change is one Lua script, so that the record, the
event log and the publication move together in a single round trip, and a transition that is
no longer allowed (a finished job finishing again) changes nothing.

Each event is added to the global stream first and then to the job's stream under the same id,
so one id resumes both the per-job and the all-jobs feeds.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from functools import cached_property
from typing import Any

import orjson
from arq.constants import job_key_prefix
from arq.jobs import serialize_job
from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from hub import keys
from hub.protocol import EventType, JobStatus, dumps, loads, packed_to_json
from hub.settings import Settings

RUN_JOB = "run_job"
"""The name of the arq function that runs one job."""

_APPEND = """
local function append(event, ttl, job_maxlen, log_maxlen)
  local id = redis.call('XADD', KEYS[3], 'MAXLEN', '~', log_maxlen, '*', 'e', event)
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', job_maxlen, id, 'e', event)
  redis.call('EXPIRE', KEYS[2], ttl)
  redis.call('PUBLISH', ARGV[1], id .. ' ' .. event)
  return id
end
local function set_fields(first)
  for i = first, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
"""

# KEYS: record, job events, events log, idempotency (or ''), arq job, queue, jobs index,
#       owner's jobs index, owner's queued jobs
# ARGV: channel, event, ttl, job_maxlen, log_maxlen, idem_value, arq_job, score, created_ms,
#       wake channel, job id, max queued, max queued per owner, field, value, ...
# Returns {1, event id} (created), {0, idempotency value} (a repeat), {2, ''} (queue full) or
# {3, ''} (the owner's share of the queue is full).
_CREATE = (
    _APPEND
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return {1, ''} end  -- a retried create
local existing = KEYS[4] ~= '' and redis.call('GET', KEYS[4])
if existing then return {0, existing} end
if redis.call('ZCARD', KEYS[6]) >= tonumber(ARGV[12]) then return {2, ''} end
local expired = '(' .. (ARGV[9] - ARGV[3] * 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[9], '-inf', expired)
if redis.call('ZCARD', KEYS[9]) >= tonumber(ARGV[13]) then return {3, ''} end
if KEYS[4] ~= '' then redis.call('SET', KEYS[4], ARGV[6], 'EX', ARGV[3]) end
set_fields(14)
redis.call('EXPIRE', KEYS[1], ARGV[3])
local id = append(ARGV[2], ARGV[3], ARGV[4], ARGV[5])
redis.call('PSETEX', KEYS[5], tonumber(ARGV[3]) * 1000, ARGV[7])
redis.call('ZADD', KEYS[6], ARGV[8], ARGV[11])
for i = 7, 9 do
  redis.call('ZADD', KEYS[i], ARGV[9], ARGV[11])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', expired)
  redis.call('PEXPIRE', KEYS[i], ARGV[3] * 1000)
end
redis.call('PUBLISH', ARGV[10], '')
return {1, id}
"""
)

# KEYS: record, job events, events log, cancel flag, owner's queued jobs
# ARGV: channel, event, ttl, job_maxlen, log_maxlen, allowed statuses (space separated),
#       new status, guard field, guard value, job id, field, value, ...
# The guard (a numeric record field and the value it moves to) makes a transition happen once:
# ``attempt`` for ``started``, ``done`` for ``progress``. A retried command finds the value
# already there and succeeds without repeating the event; a smaller value is refused.
# Returns {appended (0/1), status before, event id, cancel requested (0/1)}.
_TRANSITION = (
    _APPEND
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {0, '', '', 0} end
local cancel = redis.call('EXISTS', KEYS[4])
if not string.find(' ' .. ARGV[6] .. ' ', ' ' .. status .. ' ', 1, true) then
  return {0, status, '', cancel}
end
if ARGV[8] ~= '' then
  local recorded = tonumber(redis.call('HGET', KEYS[1], ARGV[8]) or -1)
  local wanted = tonumber(ARGV[9])
  if recorded > wanted then return {0, status, '', cancel} end  -- overtaken by a later one
  if recorded == wanted then return {1, status, '', cancel} end  -- a retry: already done
end
if ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 'status', ARGV[7]) end
if ARGV[7] ~= '' and ARGV[7] ~= 'queued' then redis.call('ZREM', KEYS[5], ARGV[10]) end
set_fields(11)
local id = append(ARGV[2], ARGV[3], ARGV[4], ARGV[5])
return {1, status, id, cancel}
"""
)

# KEYS: record, job events, events log, cancel flag, arq job, queue, owner's queued jobs
# ARGV: channel, event, ttl, job_maxlen, log_maxlen, job id, finished_at (unix seconds)
# A queued job is taken off the queue and canceled at once; a running one is flagged and
# stops at its next chunk. Returns the status found.
_CANCEL = (
    _APPEND
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'queued' then
  redis.call('ZREM', KEYS[6], ARGV[6])
  redis.call('ZREM', KEYS[7], ARGV[6])
  redis.call('DEL', KEYS[5])
  redis.call('HSET', KEYS[1], 'status', 'canceled', 'finished_at', ARGV[7])
  append(ARGV[2], ARGV[3], ARGV[4], ARGV[5])
elseif status == 'started' then
  redis.call('SET', KEYS[4], '1', 'EX', ARGV[3])
end
return status
"""
)


@dataclass(frozen=True)
class Step:
    """One transition of a job: the event to append, and when it may happen."""

    event: EventType
    allowed: tuple[JobStatus, ...]
    status: JobStatus | None = None
    data: Any = None
    fields: Mapping[str, Any] = field(default_factory=dict)
    guard: tuple[str, int] | None = None


class Created(IntEnum):
    REPEAT = 0
    CREATED = 1
    FULL = 2
    OWNER_FULL = 3


@dataclass(frozen=True)
class Event:
    """One event as stored: ``id`` is its stream id, ``data`` may hold packed tensors."""

    id: str
    job_id: str
    type: EventType
    ts: float
    model: str
    owner: str
    data: Mapping[str, Any] = field(default_factory=dict)

    size: int = 0  # bytes as stored: what holding it costs, for the subscribers' byte bounds

    @classmethod
    def from_wire(cls, event_id: str, raw: bytes) -> Event:
        body = loads(raw)
        return cls(
            id=event_id, type=EventType(body["type"]), size=len(raw), **_without(body, "type")
        )

    @cached_property
    def json(self) -> bytes:
        """The event as clients see it, the same on SSE and WebSocket: encoded once, however
        many subscribers it goes to."""
        data = dict(self.data)
        if "outputs" in data:
            data["outputs"] = [packed_to_json(o) for o in data["outputs"]]
        view = {"id": self.id, "job_id": self.job_id, "type": self.type.value, "ts": self.ts}
        return orjson.dumps({**view, "model": self.model, "data": data})

    @cached_property
    def sse(self) -> bytes:
        """The event as one Server-Sent Events frame (orjson writes no newlines)."""
        return b"id: %s\nevent: %s\ndata: %s\n\n" % (
            self.id.encode(),
            self.type.value.encode(),
            self.json,
        )

    @cached_property
    def ws(self) -> str:
        """The event as one WebSocket message, shared by every socket it goes to."""
        return '{"type":"event","event":' + self.json.decode() + "}"

    @property
    def terminal(self) -> bool:
        return self.type in (EventType.SUCCEEDED, EventType.FAILED, EventType.CANCELED)


def _without(body: Mapping[str, Any], *names: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in names}


@dataclass(frozen=True)
class Limits:
    ttl_s: int
    job_maxlen: int = 10_000
    log_maxlen: int = 100_000

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(settings.job_ttl_s, settings.job_stream_maxlen, settings.events_maxlen)


class JobStore:
    """Jobs in Redis. Methods are one round trip each unless they say otherwise."""

    def __init__(self, redis: Redis, limits: Limits) -> None:
        self.redis = redis
        self.limits = limits
        self._create = redis.register_script(_CREATE)
        self._transition = redis.register_script(_TRANSITION)
        self._cancel = redis.register_script(_CANCEL)

    def _event(self, job_id: str, type_: EventType, model: str, owner: str, data: Any) -> bytes:
        body = {"job_id": job_id, "type": type_.value, "ts": time.time(), "model": model}
        return dumps({**body, "owner": owner, "data": data or {}})

    def _common_args(self, event: bytes) -> list[Any]:
        lim = self.limits
        return [keys.EVENTS_CHANNEL, event, lim.ttl_s, lim.job_maxlen, lim.log_maxlen]

    async def create(
        self,
        record: Mapping[str, Any],
        job_kwargs: Mapping[str, Any],
        *,
        pool: str,
        idempotency: tuple[str, str] | None = None,
        priority: int = 0,
        max_queued: int = 10_000,
        max_queued_per_owner: int = 10_000,
    ) -> tuple[Created, str]:
        """Write the record, its ``queued`` event and the arq job at once.

        Returns ``(CREATED, event id)``; ``(REPEAT, idempotency value)`` when the idempotency
        key was already used, ``(FULL, "")`` when the pool's queue holds ``max_queued`` jobs,
        or ``(OWNER_FULL, "")`` when the owner has ``max_queued_per_owner`` jobs waiting: then
        nothing is written.
        """
        job_id = record["id"]
        now_ms = int(record["created_at"] * 1000)
        arq_job = serialize_job(RUN_JOB, (), dict(job_kwargs), None, now_ms, serializer=dumps)
        idem_key, idem_value = ("", job_id)
        if idempotency is not None:
            idem_key = keys.idempotency(idempotency[0], idempotency[1])
            idem_value = f"{job_id} {record.get('fingerprint', '')}"
        event = self._event(job_id, EventType.QUEUED, record["model"], record["owner"], {})
        created, value = await self._create(
            keys=[
                keys.job(job_id),
                keys.job_events(job_id),
                keys.EVENTS_STREAM,
                idem_key,
                job_key_prefix + job_id,
                keys.queue(pool),
                keys.JOBS_INDEX,
                keys.owner_jobs(record["owner"]),
                keys.owner_queued(record["owner"]),
            ],
            args=[
                *self._common_args(event),
                idem_value,
                arq_job,
                # arq runs only jobs whose score (a run-at time) has passed: every priority the
                # API accepts (-100 to 100, hub/schemas.py) is a time in the past, so priority
                # orders the queue (one level outranks a second of waiting) and never delays
                now_ms - (priority + 100) * 1000,
                now_ms,
                keys.wake(pool),
                job_id,
                max_queued,
                max_queued_per_owner,
                *_flatten(record),
            ],
        )
        return Created(created), value.decode()

    async def transition(
        self, job_id: str, *steps: Step, model: str, owner: str
    ) -> list[tuple[bool, str, bool]]:
        """Apply each step in order, in one round trip.

        A step appends its event (and moves to its status) if the job is in one of its
        ``allowed`` statuses and the record's ``guard`` field is below the guard's value.
        Returns, per step: (appended, the status found, cancel requested).
        """
        calls = [
            (
                [
                    keys.job(job_id),
                    keys.job_events(job_id),
                    keys.EVENTS_STREAM,
                    keys.job_cancel(job_id),
                    keys.owner_queued(owner),
                ],
                [
                    *self._common_args(self._event(job_id, st.event, model, owner, st.data)),
                    " ".join(s.value for s in st.allowed),
                    st.status.value if st.status else "",
                    *(st.guard or ("", "")),
                    job_id,
                    *_flatten({**st.fields, **dict([st.guard] if st.guard else [])}),
                ],
            )
            for st in steps
        ]
        if len(calls) == 1:
            results = [await self._transition(keys=calls[0][0], args=calls[0][1])]
        else:
            try:
                results = await self._pipelined(calls)
            except NoScriptError:  # Redis restarted and forgot its scripts
                await self.redis.script_load(_TRANSITION)
                results = await self._pipelined(calls)
        return [(bool(a), before.decode(), bool(c)) for a, before, _id, c in results]

    async def _pipelined(self, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        # EVALSHA by hand: redis-py's pipelined scripts send SCRIPT EXISTS on every execute
        async with self.redis.pipeline(transaction=False) as pipe:
            for call_keys, args in calls:
                pipe.evalsha(self._transition.sha, len(call_keys), *call_keys, *args)
            return await pipe.execute()

    async def cancel(self, job_id: str, *, model: str, owner: str, pool: str) -> str:
        """Cancel: at once when queued, at the next chunk when running. Returns the status found."""
        raw = self._event(
            job_id, EventType.CANCELED, model, owner, {"reason": "canceled by client"}
        )
        status = await self._cancel(
            keys=[
                keys.job(job_id),
                keys.job_events(job_id),
                keys.EVENTS_STREAM,
                keys.job_cancel(job_id),
                job_key_prefix + job_id,
                keys.queue(pool),
                keys.owner_queued(owner),
            ],
            args=[*self._common_args(raw), job_id, time.time()],
        )
        return status.decode() if status else ""

    async def get(self, job_id: str) -> dict[str, Any] | None:
        raw = await self.redis.hgetall(keys.job(job_id))  # type: ignore[misc]  # redis-py types sync and async as one
        return _decode_record(raw) if raw else None

    async def get_many(self, job_ids: Sequence[str]) -> list[dict[str, Any] | None]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(keys.job(job_id))
            raws = await pipe.execute()
        return [_decode_record(raw) if raw else None for raw in raws]

    async def recent_ids(
        self, owner: str | None, before: tuple[float, str] | None, count: int
    ) -> list[tuple[str, float]]:
        """Up to ``count`` ids of the owner's jobs (None: every job) older than ``before``
        (creation ms, job id), newest first.

        Jobs created in the same millisecond share a score; Redis orders those by id, so the
        id breaks the tie and a page boundary between them loses none.
        """
        top = "+inf" if before is None else before[0]
        index = keys.JOBS_INDEX if owner is None else keys.owner_jobs(owner)
        rows = await self.redis.zrevrangebyscore(
            index, top, "-inf", start=0, num=count + 16, withscores=True
        )
        found = [(job_id.decode(), score) for job_id, score in rows]
        if before is not None:
            found = [
                (j, s) for j, s in found if s < before[0] or (s == before[0] and j < before[1])
            ]
        return found[:count]

    async def log_after(self, after: str, count: int | None = None) -> list[Event]:
        """Events of the global log after the id ``after`` (at most ``count``)."""
        rows = await self.redis.xrange(keys.EVENTS_STREAM, min=f"({after}", count=count)
        return [Event.from_wire(eid.decode(), body[b"e"]) for eid, body in rows]

    async def log_holds(self, after: str) -> bool:
        """Whether every event after ``after`` is still in the capped global log."""
        first = await self.redis.xrange(keys.EVENTS_STREAM, count=1)
        return not first or stream_key(first[0][0].decode()) <= stream_key(after)

    async def events(self, job_id: str, after: str = "0", count: int | None = None) -> list[Event]:
        """The job's stored events after the id ``after`` (at most ``count``)."""
        rows = await self.redis.xrange(
            keys.job_events(job_id), min=f"({after}" if after != "0" else "-", count=count
        )
        return [Event.from_wire(eid.decode(), body[b"e"]) for eid, body in rows]


def stream_key(event_id: str) -> tuple[int, int]:
    """An event id (a stream id ``ms-seq``; "0" is before all) as a comparable tuple."""
    ms, _, seq = event_id.partition("-")
    parts = (ms, seq or "0")
    # isdigit() alone takes other scripts' digits ("١٢"), which Redis refuses
    if not all(p.isascii() and p.isdigit() and int(p) < 2**64 for p in parts):
        raise ValueError(
            f"{event_id[:40]!r} is not an event id (like 1700000000000-0, each part below 2^64)"
        )
    return int(ms), int(seq or 0)


# Record fields whose values are msgpack; the rest are text or numbers.
_PACKED = ("inputs", "outputs", "parameters", "progress")
_NUMBERS = ("created_at", "started_at", "finished_at")


def _flatten(record: Mapping[str, Any]) -> list[Any]:
    out: list[Any] = []
    for name, value in record.items():
        if value is None:
            continue
        out.append(name)
        out.append(dumps(value) if name in _PACKED else value)
    return out


def _decode_record(raw: Mapping[bytes, bytes]) -> dict[str, Any]:
    record: dict[str, Any] = {}
    for name_b, value in raw.items():
        name = name_b.decode()
        if name in _PACKED:
            record[name] = loads(value)
        elif name in _NUMBERS:
            record[name] = float(value)
        elif name in ("attempt", "rows", "done"):
            record[name] = int(value)
        else:
            record[name] = value.decode()
    return record
