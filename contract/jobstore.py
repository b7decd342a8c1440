"""The Redis data layer for jobs: records, event logs, the arq queue. Shared by hub and workers.
Their writes are here; what is read of them (records, outputs, events, listings) is
``contract/jobreads.py``, which ``JobStore`` extends.

A job lives in three keys: its record (a hash), its event stream, and, until a worker takes it,
arq's job key and queue entry. Every state change is one Lua script (``contract/lua/``), so that the record, the
event log and the publication move together in a single round trip, and a transition that is
no longer allowed (a finished job finishing again) changes nothing.

Every key of a job and of its pool's queue carries the pool's hash tag (contract/keys.py), so a
script touches one slot of a Redis Cluster. Each event is added to its pool's log first and then
to the job's stream under the same id, so one id resumes both the job's feed and the pool's
part of the all-jobs feed; listings and the all-jobs feed merge the pools' indexes and logs
(a reader's place in them: ``contract/position.py``). A record's fields as Redis holds them are
``contract/records.py``'s.

Concurrent creations of one owner, pool and priority are gathered (``contract/gather.py``) into
one script call that creates them all, each with its own record, event and verdict, and queues
them as one arq job (``RUN_JOBS``) that lists those it created; concurrent transitions (the
jobs a worker ends together) go in one call too. A lone one goes as one call of its own. Each
job's part of such a call is one or two msgpack arguments (``_lua_strings``), not tens.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import msgpack
from arq.jobs import serialize_job
from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from contract import keys, records, scripts
from contract.connection import database
from contract.errors import Unavailable
from contract.events import EventType, JobStatus
from contract.gather import Gatherer
from contract.jobreads import JobReads
from contract.records import step_fields
from contract.scripts import Script
from contract.settings import Settings
from contract.wire import dumps

RUN_JOB = "run_job"
"""The name of the arq function that runs one job."""
RUN_JOBS = "run_jobs"
"""The name of the arq function that runs the jobs created together (``jobs``: each one's
``run_job`` arguments and its ``job_id``)."""

CREATE = scripts.load("create")
CREATE_MANY = scripts.load("create_many")
TRANSITION = scripts.load("transition")
TRANSITION_MANY = scripts.load("transition_many")
CANCEL = scripts.load("cancel")

_RUN_JOB_BYTES = len(serialize_job(RUN_JOB, (), {}, None, 2**40, serializer=dumps)) - 1
"""What arq's format adds to a job's arguments (its enqueue time: any ms since 1970-02 is 9 bytes)."""

GATHER_MOST = 32
"""Jobs in one gathered script call at most. Smaller than the 64 clients of the benchmark's
tiny C=64 on purpose: all of them in one call made one convoy of 64 jobs, which the hub, then
the worker, then the hub again handled each while the other idled (0.55-0.63 cores idle); in
two calls of ~32, one is run while the other is answered and read (0.31-0.32 idle). Jobs/
baseline rows/s went 0.350 and 0.377 -> 0.397 and 0.429 in alternated pairs, at 12.3 Redis
commands a job (12.0 before); 16 did as well at 12.9."""


def queue_score(now_ms: int, priority: int) -> int:
    """A job's score in its pool's queue, for both lanes."""
    # arq runs only jobs whose score (a run-at time) has passed: every priority the API
    # accepts (-100 to 100, hub/schemas.py) is a time in the past, so priority orders the
    # queue (one level outranks a second of waiting) and never delays
    return now_ms - (priority + 100) * 1000


@dataclass(frozen=True)
class Step:
    """One transition of a job: the event to append, and when it may happen. The record
    fields it sets follow from the event (``contract.records.step_fields``)."""

    event: EventType
    allowed: tuple[JobStatus, ...]
    status: JobStatus | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    guard: tuple[str, int] | None = None
    outputs: bytes = b""  # the packed outputs to store once (contract/outputs.py), if any
    outputs_key: str = ""  # where: the job's outputs key unless said (a streamed chunk's)


@dataclass(frozen=True, slots=True)
class _NewJob:
    """A job to create: what create.lua and create_many.lua take of it."""

    id: str
    owner: str
    pool: str
    created_ms: int
    kwargs: dict[str, Any]  # its arq arguments
    fields: list[Any]  # its record's, flat: field, value, ...
    event: bytes  # its `queued` event
    idem_key: str  # "" without an Idempotency-Key
    idem_value: str
    stored_bytes: int


@dataclass(frozen=True, slots=True)
class _Line:
    """The jobs that may be created in one call: one owner's, of one pool and priority,
    under the same bounds."""

    pool: str
    owner: str
    priority: int
    max_queued: int
    max_owner_queued: int
    max_owner_bytes: int


@dataclass(frozen=True)
class _Steps:
    """One job's steps for transition.lua: its own keys, its steps (one argument: append.lua's
    ``read_steps``) and the outputs one of them stores."""

    job_id: str
    keys: dict[str, str]
    steps: bytes
    outputs: bytes


class Created(IntEnum):
    REPEAT = 0
    CREATED = 1
    FULL = 2
    OWNER_FULL = 3
    OWNER_STORAGE_FULL = 4


@dataclass(frozen=True)
class Limits:
    ttl_s: int
    job_maxlen: int = 10_000
    log_maxlen: int = 100_000
    inline_output_bytes: int = 64 * 1024
    wait_replicas: int = 0  # replicas that must hold a new job before it is acknowledged
    wait_timeout_ms: int = 1000

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(
            settings.job_ttl_s,
            settings.job_stream_maxlen,
            settings.events_maxlen,
            settings.inline_output_bytes,
            settings.redis_wait_replicas,
            max(1, round(settings.redis_wait_timeout_s * 1000)),
        )


class JobStore(JobReads):
    """Jobs in Redis: their writes here, their reads in ``JobReads``. Methods are one round
    trip each unless they say otherwise."""

    def __init__(self, redis: Redis, limits: Limits) -> None:
        super().__init__(redis, limits.log_maxlen)
        self.limits = limits
        self.db = database(redis)
        self._registering: dict[str, asyncio.Future[Any]] = {}
        self.creates = Gatherer(self._create_gathered, most=GATHER_MOST)
        # gathered per pool: one call's keys lie in one slot
        self.transitions = Gatherer(self._transition_gathered, most=GATHER_MOST)

    def _event(
        self, job_id: str, type_: EventType, model: str, owner: str, data: Any, ts: float = 0.0
    ) -> bytes:
        body = {"job_id": job_id, "type": type_.value, "ts": ts or time.time(), "model": model}
        return dumps({**body, "owner": owner, "data": data or {}})

    def _common_args(self, event: bytes, pool: str) -> dict[str, Any]:
        """The arguments every script that appends an event takes."""
        lim = self.limits
        return {
            "channel": keys.events_channel(pool, self.db),
            "event": event,
            "ttl": lim.ttl_s,
            "job_maxlen": lim.job_maxlen,
            "log_maxlen": lim.log_maxlen,
            "webhook_wake": keys.webhooks_wake(pool, self.db),
        }

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
        max_stored_per_owner: int = 2**62,
        inputs_bytes: int = 0,
    ) -> tuple[Created, str]:
        """Write the record, its ``queued`` event and the arq job at once.

        Returns ``(CREATED, event id)``; ``(REPEAT, idempotency value)`` when the idempotency
        key was already used, ``(FULL, "")`` when the pool's queue holds ``max_queued`` jobs,
        ``(OWNER_FULL, "")`` when the owner has ``max_queued_per_owner`` jobs waiting, or
        ``(OWNER_STORAGE_FULL, bytes held)`` when the owner's jobs of the last TTL would store
        more than ``max_stored_per_owner`` bytes (inputs and parameters): then nothing is
        written. ``inputs_bytes``: those of its inputs stored apart (contract/inputs.py).
        """
        job_id, owner = record["id"], record["owner"]
        await self._register(pool)
        now_ms = int(record["created_at"] * 1000)
        idem_key, idem_value = "", ""
        if idempotency is not None:
            idem_key = keys.idempotency(pool, idempotency[0], idempotency[1])
            idem_value = f"{job_id} {record.get('fingerprint', '')}"
        fields = records.flatten(record)
        kwargs = dict(job_kwargs)
        job = _NewJob(
            job_id,
            owner,
            pool,
            now_ms,
            kwargs,
            fields,
            self._event(job_id, EventType.QUEUED, record["model"], owner, {}),
            idem_key,
            idem_value,
            # its arq job's bytes as if queued alone, its inputs' and its parameters'
            _RUN_JOB_BYTES
            + len(dumps(kwargs))
            + inputs_bytes
            + len(dumps(record.get("parameters"))),
        )
        # one owner's jobs of one pool and priority, under the same bounds, may go together
        bounds = (max_queued, max_queued_per_owner, max_stored_per_owner)
        line = _Line(pool, owner, priority, *bounds)
        created, value = await self.creates(line, job)
        return Created(created), value.decode()

    async def _register(self, pool: str) -> None:
        """Add the pool to ``keys.POOLS`` (once per process) before its first job, so that
        listings and the all-jobs feed find its index and log. Concurrent first jobs of a pool
        wait for the one addition, and go on in the order they came (as they are gathered)."""
        if pool in self._pools:
            return
        adding = self._registering.get(pool)
        if adding is None:
            adding = self._registering[pool] = asyncio.ensure_future(
                self.redis.sadd(keys.POOLS, pool)  # type: ignore[arg-type]  # redis-py types sync and async as one
            )
        try:
            await asyncio.shield(adding)
        finally:
            if self._registering.get(pool) is adding and adding.done():
                del self._registering[pool]
        self._pools.add(pool)

    async def _create_gathered(self, line: Hashable, jobs: Sequence[_NewJob]) -> list[Any]:
        """Create the jobs of one line in one call: create.lua for one, else create_many.lua,
        which queues those it creates as one arq job. Returns create.lua's answer per job."""
        assert isinstance(line, _Line)
        pool, owner = line.pool, line.owner
        lim = self.limits
        shared = {
            "channel": keys.events_channel(pool, self.db),
            "ttl": lim.ttl_s,
            "job_maxlen": lim.job_maxlen,
            "log_maxlen": lim.log_maxlen,
            "score": queue_score(jobs[0].created_ms, line.priority),
            "wake": keys.wake(pool, self.db),
            "max_queued": line.max_queued,
            "max_owner_queued": line.max_owner_queued,
            "max_owner_bytes": line.max_owner_bytes,
            "webhook_wake": keys.webhooks_wake(pool, self.db),
            # a parked worker is handed the arq job at once (lua/arq.lua's hand_off)
            **keys.hand_off_args(pool, self.db),
        }
        pool_keys = {
            "log": keys.events_log(pool),
            "queue": keys.queue(pool),
            "index": keys.jobs_index(pool),
            "owner_index": keys.owner_jobs(pool, owner),
            "owner_queued": keys.owner_queued(pool, owner),
            "owner_bytes": keys.owner_bytes(pool, owner),
            "webhooks": keys.webhooks(pool),
            "parked": keys.parked(pool),
        }
        # no idempotency key: a name in the pool's slot all the same (a cluster refuses a
        # script whose keys lie in two slots), which the scripts leave alone
        unused = keys.idempotency(pool, owner, "")
        if len(jobs) == 1:
            (job,) = jobs
            arq_job = serialize_job(RUN_JOB, (), job.kwargs, None, job.created_ms, serializer=dumps)
            call_keys: dict[str, Any] = {
                **pool_keys,
                "record": keys.job(job.id),
                "events": keys.job_events(job.id),
                "idempotency": job.idem_key or unused,
                "arq_job": keys.arq_job_prefix(pool) + job.id,
            }
            args = {
                **shared,
                "event": job.event,
                "idem_value": job.idem_value,
                "arq_payload": arq_job,
                "created_ms": job.created_ms,
                "job_id": job.id,
                "stored_bytes": job.stored_bytes,
                "fields": job.fields,
            }
            return [await self._create(CREATE, call_keys, args, f"job {job.id}")]
        # how many jobs and the first one's id: queue_stats.lua counts them and their age
        batch_id = f"jobs-{len(jobs)}-{jobs[0].id}"
        now_ms = max(job.created_ms for job in jobs)
        head, tail = _batch_payload(now_ms)
        per_job: list[Any] = []
        job_keys: list[str] = []
        for job in jobs:
            run = dumps({"job_id": job.id, **job.kwargs})
            record = _lua_strings(job.fields)
            per_job += (job.id, job.event, job.idem_value, job.stored_bytes, record, run)
            job_keys += (keys.job(job.id), keys.job_events(job.id), job.idem_key or unused)
        call_keys = {
            **pool_keys,
            "arq_job": keys.arq_job_prefix(pool) + batch_id,
            "jobs": job_keys,
        }
        args = {
            **shared,
            "batch_id": batch_id,
            "payload_head": head,
            "payload_tail": tail,
            "created_ms": now_ms,
            "jobs": per_job,
        }
        what = f"job {jobs[0].id} (one of {len(jobs)} created together)"
        answer: list[Any] = await self._create(CREATE_MANY, call_keys, args, what)
        return answer

    async def _create(
        self,
        script: Script,
        call_keys: Mapping[str, Any],
        args: Mapping[str, Any],
        what: str = "",
    ) -> Any:
        """Run a create script; with ``wait_replicas``, wait until that many replicas hold
        what it wrote (a failover then promotes one that has it), else raise Unavailable."""
        need = self.limits.wait_replicas
        if not need:
            return await script(self.redis, call_keys, args)
        try:
            result, replicas = await self._create_and_wait(script, call_keys, args)
        except NoScriptError:  # a new master (a failover) or a restart forgot the script
            await script.ensure(self.redis)
            result, replicas = await self._create_and_wait(script, call_keys, args)
        answers = [result] if script is CREATE else result
        done = (Created.CREATED, Created.REPEAT)
        if any(answer[0] in done for answer in answers) and replicas < need:
            raise Unavailable(
                f"{what} was written but only {replicas} of the {need} Redis replicas "
                f"asked for (INFERHUB_REDIS_WAIT_REPLICAS) confirmed it within "
                f"{self.limits.wait_timeout_ms} ms, so a failover could lose it. It may exist "
                "and run: retry with the same Idempotency-Key, which cannot make a second job",
                "not_replicated",
                headers={"Retry-After": "1"},
            )
        return result

    async def _create_and_wait(
        self, script: Script, call_keys: Mapping[str, Any], args: Mapping[str, Any]
    ) -> tuple[Any, int]:
        # one pipeline, so one connection: WAIT counts the replicas that acknowledged the
        # writes of the connection it is sent on
        async with self.redis.pipeline(transaction=False) as pipe:
            script.queue(pipe, call_keys, args)
            pipe.execute_command("WAIT", self.limits.wait_replicas, self.limits.wait_timeout_ms)
            result, replicas = await pipe.execute()
        return result, int(replicas)

    async def transition(
        self, job_id: str, *steps: Step, model: str, owner: str
    ) -> list[tuple[bool, str, bool]]:
        """Apply each step in order, in one script call (at most one of them stores outputs).

        A step appends its event (and moves to its status) if the job is in one of its
        ``allowed`` statuses and the record's ``guard`` field is below the guard's value.
        Returns, per step: (appended, the status found, cancel requested).
        """
        storing = [st for st in steps if st.outputs]
        if len(storing) > 1:
            raise ValueError("one step of a transition at most stores outputs")
        now = time.time()
        flat: list[Any] = []
        for st in steps:
            fields = records.flatten(
                {**step_fields(st.event, st.data, now), **dict([st.guard] if st.guard else [])}
            )
            flat += (
                self._event(job_id, st.event, model, owner, st.data, now),
                " ".join(s.value for s in st.allowed),
                st.status.value if st.status else "",
                st.guard[0] if st.guard else "",
                st.guard[1] if st.guard else "",
                "1" if st.outputs else "",
                len(fields),
                *fields,
            )
        pool = keys.pool_of(job_id)
        outputs_key = storing[0].outputs_key if storing else ""
        job = _Steps(
            job_id,
            {
                "record": keys.job(job_id),
                "events": keys.job_events(job_id),
                "cancel": keys.job_cancel(job_id),
                "owner_queued": keys.owner_queued(pool, owner),
                "outputs": outputs_key or keys.job_outputs(job_id),
            },
            _lua_strings(flat),
            storing[0].outputs if storing else b"",
        )
        if len(job.outputs) > self.limits.inline_output_bytes:
            (results,) = await self._transition_gathered(pool, (job,))  # large: on its own
        else:
            results = await self.transitions(pool, job)
        return [(bool(a), before.decode(), bool(c)) for a, before, _id, c in results]

    async def _transition_gathered(self, line: Hashable, jobs: Sequence[_Steps]) -> list[Any]:
        """Apply the jobs' steps (of one pool: ``line``) in one call: transition.lua for one
        job, else transition_many.lua. Returns transition.lua's answer per job."""
        lim = self.limits
        pool = str(line)
        shared = {
            "channel": keys.events_channel(pool, self.db),
            "ttl": lim.ttl_s,
            "job_maxlen": lim.job_maxlen,
            "log_maxlen": lim.log_maxlen,
            "webhook_wake": keys.webhooks_wake(pool, self.db),
        }
        if len(jobs) == 1:
            job = jobs[0]
            call_keys = {**job.keys, "log": keys.events_log(pool), "webhooks": keys.webhooks(pool)}
            args = {**shared, "job_id": job.job_id, "steps": job.steps, "outputs": job.outputs}
            return [await TRANSITION(self.redis, call_keys, args)]
        names = ("record", "events", "cancel", "owner_queued", "outputs")
        per_job: list[Any] = []
        for job in jobs:
            per_job += (job.job_id, job.steps, job.outputs)
        answer: list[Any] = await TRANSITION_MANY(
            self.redis,
            {
                "log": keys.events_log(pool),
                "webhooks": keys.webhooks(pool),
                "jobs": [job.keys[n] for job in jobs for n in names],
            },
            {**shared, "jobs": per_job},
        )
        return answer

    async def cancel(self, job_id: str, *, model: str, owner: str) -> str:
        """Cancel: at once when queued, at the next chunk when running. Returns the status found."""
        pool = keys.pool_of(job_id)
        raw = self._event(
            job_id, EventType.CANCELED, model, owner, {"reason": "canceled by client"}
        )
        status = await CANCEL(
            self.redis,
            keys={
                "record": keys.job(job_id),
                "events": keys.job_events(job_id),
                "log": keys.events_log(pool),
                "cancel": keys.job_cancel(job_id),
                "arq_job": keys.arq_job_prefix(pool) + job_id,
                "queue": keys.queue(pool),
                "owner_queued": keys.owner_queued(pool, owner),
                "webhooks": keys.webhooks(pool),
            },
            args={**self._common_args(raw, pool), "job_id": job_id, "finished_at": time.time()},
        )
        return status.decode() if status else ""


@functools.lru_cache(maxsize=4)
def _batch_payload(now_ms: int) -> tuple[bytes, bytes]:
    """A ``run_jobs`` arq job (arq's format) around its list of jobs: what comes before the
    list's msgpack header, and after its last job (create_many.lua joins them)."""
    empty = serialize_job(RUN_JOBS, (), {"jobs": []}, None, now_ms, serializer=dumps)
    at = empty.index(dumps("jobs") + b"\x90") + len(dumps("jobs"))
    return empty[:at], empty[at + 1 :]


# a tuple, not ``str | bytes``: that union is built anew at each element (4.9 -> 2.4 µs for a
# transition's ~20 values)
_TEXT = (str, bytes)


def _lua_strings(values: Sequence[Any]) -> bytes:
    """Values as one argument that a script reads with ``cmsgpack.unpack``: a msgpack array of
    strings, numbers written as redis-py writes them (Lua would print a float to 14 digits),
    bytes in msgpack's old raw form (Redis 7.0's cmsgpack reads no bin type)."""
    strings = [v if isinstance(v, _TEXT) else repr(v) for v in values]
    packed: bytes = msgpack.packb(strings, use_bin_type=False)
    return packed
