"""The worker's own loop (``workers/loop.py``, ``workers/attempt.py``) and the pieces of arq 0.28
it relies on, on the module's real Redis database: the job the hub's enqueue writes
(``serialize_job`` under ``keys.arq_job_prefix``) is the job the worker runs; ``Retry`` and
``CancelledError`` put it back (a deferred retry ``defer`` from now); a timeout ends it; past
its tries it is dropped; a killed worker's job is reaped and runs again; SIGTERM and SIGINT hand
the running job back at once and run the shutdown hook.

Each test serves a pool of its own, so no other worker sees its jobs. The tests wait on Redis
itself: keyspace notifications of a job's keys, or BLPOP on the notes the job functions push.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from arq import Retry
from arq.jobs import deserialize_job_raw, serialize_job
from helpers import ROOT, until
from loop_worker import notes, worker
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from contract import keys
from contract.channels import publish
from contract.connection import connect, database
from contract.jobstore import RUN_JOB, Created, JobStore, Limits
from contract.records import JobArgs, JobRecord
from contract.wire import dumps, loads
from workers.attempt import Function
from workers.loop import WorkerLoop
from workers.reaper import OWN_GRACE_MS

WAIT_S = 30
"""The longest any wait here takes before it fails."""

LONG_S = 60.0
"""A function timeout whose in-progress key (+ 10 s) outlives every wait: a job can run again
within a test only if its attempt or the reaper deleted that key."""


@pytest.fixture(scope="module", autouse=True)
def keyspace_events(redis: SyncRedis) -> Iterator[None]:
    """Keyspace notifications of generic commands (DEL) and hashes (HSET), for the waits."""
    previous = redis.config_get("notify-keyspace-events")["notify-keyspace-events"]
    redis.config_set("notify-keyspace-events", "Kgh")
    yield
    redis.config_set("notify-keyspace-events", previous)


@pytest.fixture
async def r(redis_url: str) -> AsyncIterator[Redis]:
    client = connect(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def pool() -> str:
    return f"loop-{uuid.uuid4().hex[:8]}"


def job_args(pool: str) -> JobArgs:
    return {
        "model": "loop-test",
        "version": "1",
        "owner": f"t-{pool}",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": b"\x00" * 8}],
        "outputs": None,
        "request_id": "r-1",
    }


async def enqueue(r: Redis, pool: str) -> tuple[str, JobArgs]:
    """Queue a job as the hub does (``JobStore.create``: one script writes it all)."""
    job_id, args = keys.new_job_id(pool), job_args(pool)
    record: JobRecord = {
        "id": job_id,
        "model": args["model"],
        "version": args["version"],
        "owner": args["owner"],
        "pool": pool,
        "status": "queued",
        "attempt": 0,
        "created_at": time.time(),
        "rows": 1,
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2]}],
        "parameters": None,
        "fingerprint": None,
        "request_id": args["request_id"],
    }
    created, _ = await JobStore(r, Limits(ttl_s=600)).create(record, args, pool=pool)
    assert created is Created.CREATED
    return job_id, args


async def serve_until_deleted(
    redis_url: str, pool: str, key: str, *functions: Function, loop: WorkerLoop | None = None
) -> WorkerLoop:
    """Serve ``pool`` in-process (a worker with its heartbeat and reaper, or ``loop``) until
    Redis deletes ``key``; then stop the worker and wait for it to shut down."""
    client = connect(redis_url)
    async with client.pubsub() as pubsub:
        await pubsub.subscribe(f"__keyspace@{database(client)}__:{key}")
        confirmed = await pubsub.get_message(timeout=10)
        assert confirmed is not None and confirmed["type"] == "subscribe"
        loop = loop or worker(redis_url, pool, functions, reaper=True)
        served = asyncio.create_task(loop.serve())
        try:
            async with asyncio.timeout(WAIT_S):
                while True:
                    message = await pubsub.get_message(timeout=None)
                    if message is not None and message["data"] == b"del":
                        break
        finally:
            loop.stop()
            await served
    await client.aclose()
    return loop


async def ended(r: Redis, pool: str, job_id: str) -> bool:
    """Whether arq's keys of the job and its queue entry are all gone."""
    names = (keys.arq_job_prefix(pool), keys.in_progress_prefix(pool), keys.retry_prefix(pool))
    held = await r.exists(*(prefix + job_id for prefix in names))
    return held == 0 and await r.zscore(keys.queue(pool), job_id) is None


async def test_the_job_the_hub_writes_is_the_job_the_worker_runs(
    r: Redis, redis_url: str, pool: str
) -> None:
    job_id, args = await enqueue(r, pool)
    raw = await r.get(keys.arq_job_prefix(pool) + job_id)
    name, positional, kwargs, job_try, enqueued_ms = deserialize_job_raw(raw, deserializer=loads)
    assert (name, list(positional), kwargs, job_try) == (RUN_JOB, [], args, None)
    assert enqueued_ms <= time.time() * 1000
    assert await r.zscore(keys.queue(pool), job_id) is not None

    calls: list[tuple[str, int, dict[str, Any], bytes]] = []

    async def run_job(ctx: dict[str, Any], **kwargs: Any) -> None:
        holder = await ctx["redis"].get(keys.in_progress_prefix(pool) + ctx["job_id"])
        calls.append((ctx["job_id"], ctx["job_try"], kwargs, holder))

    loop = await serve_until_deleted(
        redis_url,
        pool,
        keys.arq_job_prefix(pool) + job_id,
        Function(RUN_JOB, run_job, LONG_S, max_tries=3),
    )
    assert calls == [(job_id, 1, args, loop.worker_id.encode())]  # held by its worker meanwhile
    assert await ended(r, pool, job_id)


@pytest.mark.parametrize(
    "first_try", [Retry(), asyncio.CancelledError()], ids=["Retry", "CancelledError"]
)
async def test_a_retried_or_canceled_job_runs_again(
    r: Redis, redis_url: str, pool: str, first_try: BaseException
) -> None:
    job_id, _ = await enqueue(r, pool)
    tries: list[int] = []

    async def flaky(ctx: dict[str, Any], **_: Any) -> None:
        tries.append(ctx["job_try"])
        if ctx["job_try"] == 1:
            raise first_try

    function = Function(RUN_JOB, flaky, LONG_S, max_tries=3)
    await serve_until_deleted(redis_url, pool, keys.arq_job_prefix(pool) + job_id, function)
    assert tries == [1, 2]
    assert await ended(r, pool, job_id)


async def test_a_deferred_retry_is_queued_its_defer_from_now(
    r: Redis, redis_url: str, pool: str
) -> None:
    job_id, _ = await enqueue(r, pool)

    async def later(ctx: dict[str, Any], **_: Any) -> None:
        raise Retry(defer=3600)

    before_ms = time.time() * 1000
    function = Function(RUN_JOB, later, LONG_S, max_tries=3)
    # the in-progress key goes when the attempt ends; the job stays
    await serve_until_deleted(redis_url, pool, keys.in_progress_prefix(pool) + job_id, function)
    score = await r.zscore(keys.queue(pool), job_id)
    assert score is not None and score >= before_ms + 3600 * 1000
    assert await r.get(keys.retry_prefix(pool) + job_id) == b"1"
    assert await r.exists(keys.arq_job_prefix(pool) + job_id)


async def test_a_job_past_its_timeout_is_canceled_and_ends(
    r: Redis, redis_url: str, pool: str
) -> None:
    job_id, _ = await enqueue(r, pool)
    seen_by_job: list[str] = []

    async def stuck(ctx: dict[str, Any], **_: Any) -> None:
        seen_by_job.append(f"started {ctx['job_try']}")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            seen_by_job.append("canceled")
            raise

    function = Function(RUN_JOB, stuck, 0.05, max_tries=3)
    await serve_until_deleted(redis_url, pool, keys.arq_job_prefix(pool) + job_id, function)
    assert seen_by_job == ["started 1", "canceled"]  # once: a timeout does not retry
    assert await ended(r, pool, job_id)


async def test_a_job_past_its_tries_is_dropped(r: Redis, redis_url: str, pool: str) -> None:
    job_id, _ = await enqueue(r, pool)
    tries: list[int] = []

    async def always(ctx: dict[str, Any], **_: Any) -> None:
        tries.append(ctx["job_try"])
        raise Retry()

    function = Function(RUN_JOB, always, LONG_S, max_tries=2)
    await serve_until_deleted(redis_url, pool, keys.arq_job_prefix(pool) + job_id, function)
    assert tries == [1, 2]  # the third attempt drops it unrun
    assert await ended(r, pool, job_id)


# --- worker processes: the real entry point, its signals, a kill ------------------------------


@asynccontextmanager
async def process(
    redis_url: str, pool: str, log: Path
) -> AsyncIterator[asyncio.subprocess.Process]:
    """A worker process of ``pool`` that runs every job with ``hold`` (``loop_worker.py``)."""
    with log.open("wb") as out:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            str(ROOT / "tests" / "loop_worker.py"),
            redis_url,
            pool,
            cwd=ROOT,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            yield child
        finally:
            if child.returncode is None:
                child.kill()
            await child.wait()


async def note(r: Redis, pool: str, log: Path) -> str:
    """The next note of the pool's workers (BLPOP)."""
    got = await r.blpop([notes(pool)], timeout=WAIT_S)
    if got is None:
        pytest.fail(f"no note from the worker:\n{await asyncio.to_thread(log.read_text)}")
    return got[1].decode()


async def runs_on_a_second_worker(r: Redis, redis_url: str, pool: str, job_id: str) -> list[int]:
    """Serve the pool in-process until the job ends; the tries that ran here."""
    tries: list[int] = []

    async def done(ctx: dict[str, Any], **_: Any) -> None:
        tries.append(ctx["job_try"])

    function = Function(RUN_JOB, done, LONG_S, max_tries=5)
    await serve_until_deleted(redis_url, pool, keys.arq_job_prefix(pool) + job_id, function)
    assert await ended(r, pool, job_id)
    return tries


async def test_a_killed_workers_job_is_reaped_and_runs_again(
    r: Redis, redis_url: str, pool: str, tmp_path: Path
) -> None:
    job_id, _ = await enqueue(r, pool)
    log = tmp_path / "victim.log"
    async with process(redis_url, pool, log) as victim:
        assert await note(r, pool, log) == "started 1"
        holder = await r.get(keys.in_progress_prefix(pool) + job_id)  # the claim names its worker
        assert holder is not None and holder.decode().startswith(f"t-loop-{victim.pid}-")
        victim.kill()
        await victim.wait()
    # its in-progress key would hold the job for 70 s: the second worker's reaper releases it
    # once the dead worker's heartbeat has expired
    assert await runs_on_a_second_worker(r, redis_url, pool, job_id) == [2]


async def test_a_job_a_live_worker_holds_but_does_not_run_runs_again(
    r: Redis, redis_url: str, pool: str
) -> None:
    """A Redis failover can lose the end of an attempt: the new master still has the job
    queued and held by its worker, which lives on and runs it no more."""
    job_id, _ = await enqueue(r, pool)
    tries: list[int] = []

    async def done(ctx: dict[str, Any], **_: Any) -> None:
        tries.append(ctx["job_try"])

    loop = worker(redis_url, pool, [Function(RUN_JOB, done, LONG_S, max_tries=5)], reaper=True)
    # its claim, made longer ago than the reaper's grace; it would hold the job for 70 s
    held_ms = loop.hold_ms - OWN_GRACE_MS - 1000
    await r.set(keys.in_progress_prefix(pool) + job_id, loop.worker_id, px=held_ms)
    await serve_until_deleted(redis_url, pool, keys.arq_job_prefix(pool) + job_id, loop=loop)
    assert tries == [1]
    assert await ended(r, pool, job_id)


async def test_a_handoff_the_worker_missed_is_claimed_back(
    r: Redis, redis_url: str, pool: str
) -> None:
    """The hub handed the job to this worker (contract/lua/enqueue.lua: held in its name, its
    try counted) and the message was lost with its connection: the worker's next claim takes
    it, as the try already counted, long before its hold or the reaper's grace would free it
    (no reaper runs here)."""
    job_id, _ = await enqueue(r, pool)
    tries: list[int] = []

    async def done(ctx: dict[str, Any], **_: Any) -> None:
        tries.append(ctx["job_try"])

    loop = worker(redis_url, pool, [Function(RUN_JOB, done, LONG_S, max_tries=5)])
    await r.set(keys.in_progress_prefix(pool) + job_id, loop.worker_id, px=loop.hold_ms)
    await r.set(keys.retry_prefix(pool) + job_id, 1)
    await serve_until_deleted(redis_url, pool, keys.arq_job_prefix(pool) + job_id, loop=loop)
    assert tries == [1]
    assert await ended(r, pool, job_id)


class OneAtATime:
    """A job function that notes each attempt (its id and try) and the most running at once;
    the job ``holding`` runs until ``release`` is set."""

    def __init__(self, holding: str) -> None:
        self.holding = holding
        self.holding_runs, self.release = asyncio.Event(), asyncio.Event()
        self.started: list[tuple[str, int]] = []
        self.running = self.most = 0

    async def __call__(self, ctx: dict[str, Any], **_: Any) -> None:
        self.started.append((ctx["job_id"], ctx["job_try"]))
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            if ctx["job_id"] == self.holding:
                self.holding_runs.set()
                await self.release.wait()
        finally:
            self.running -= 1


async def test_a_handoff_that_finds_the_worker_full_is_given_back_and_runs_later(
    r: Redis, redis_url: str, pool: str
) -> None:
    """max_jobs holds when a handoff crosses a claim that filled the room (the hub took the
    worker off the parked set as its claim was on its way): the handed job is not run beside
    the others; its hold and its try are undone (contract/lua/give_back.lua), and it runs on
    its first try once there is room."""
    first, _ = await enqueue(r, pool)
    job = OneAtATime(first)
    loop = worker(redis_url, pool, [Function(RUN_JOB, job, LONG_S, max_tries=5)])
    loop.max_jobs = 1
    served = asyncio.create_task(loop.serve())
    try:
        async with asyncio.timeout(WAIT_S):
            await job.holding_runs.wait()
            second, _ = await enqueue(r, pool)  # queued: the worker, full, neither parks nor claims
            hold = keys.in_progress_prefix(pool) + second
            arq_job = keys.arq_job_prefix(pool) + second
            async with r.pubsub() as pubsub:
                space = f"__keyspace@{database(r)}__:"
                await pubsub.subscribe(space + hold, space + arq_job)
                for _ in range(2):
                    assert (await pubsub.get_message(timeout=10) or {}).get("type") == "subscribe"

                async def deleted(key: str) -> None:
                    async for message in pubsub.listen():
                        if (
                            message["channel"] == (space + key).encode()
                            and message["data"] == b"del"
                        ):
                            return

                # handed as lua/arq.lua's hand_off hands a job: held in the worker's name, its
                # first try counted, 'id tries arq-job' on its channel
                await r.set(hold, loop.worker_id, px=loop.hold_ms)
                await r.set(keys.retry_prefix(pool) + second, 1)
                raw = await r.get(arq_job)
                assert raw is not None
                channel = keys.handoff(pool, loop.worker_id, database(r))
                await publish(r, channel, f"{second} 1 ".encode() + raw)
                await deleted(hold)
                assert job.started == [(first, 1)]
                assert await r.get(keys.retry_prefix(pool) + second) is None  # the try undone
                job.release.set()
                await deleted(arq_job)  # the second ran and ended
    finally:
        loop.stop()
        await served
    assert job.started == [(first, 1), (second, 1)]
    assert job.most == 1
    assert await ended(r, pool, second)


async def test_a_claimed_job_that_finds_the_room_taken_by_a_handoff_is_given_back(
    r: Redis, redis_url: str, pool: str
) -> None:
    """max_jobs holds when a claim's answer comes back after a handoff took the room (the hub
    handed a job to the parked worker as its claim was on its way, and the claim found another
    due): the claimed job is not run beside the handed one; its hold and its try are undone
    (contract/lua/give_back.lua), and it runs on its first try once there is room. The claim
    is held in Redis (``CLIENT PAUSE WRITE``) while the handoff reaches the worker."""
    handed = keys.new_job_id(pool)
    claimed = keys.new_job_id(pool)
    job = OneAtATime(handed)
    parked, hold = keys.parked(pool), keys.in_progress_prefix(pool) + claimed
    arq_job = keys.arq_job_prefix(pool) + claimed
    space = f"__keyspace@{database(r)}__:"
    async with r.pubsub() as pubsub:
        await pubsub.subscribe(space + parked, space + hold, space + arq_job)
        for _ in range(3):
            assert (await pubsub.get_message(timeout=10) or {}).get("type") == "subscribe"

        async def heard(key: str, event: bytes) -> None:
            async for message in pubsub.listen():
                if message["channel"] == (space + key).encode() and message["data"] == event:
                    return

        loop = worker(redis_url, pool, [Function(RUN_JOB, job, LONG_S, max_tries=5)])
        loop.max_jobs = 1
        served = asyncio.create_task(loop.serve())
        try:
            async with asyncio.timeout(WAIT_S):
                await heard(parked, b"hset")  # idle: parked
                # two due jobs the parked worker has not heard of (no wake-up): the claimed
                # one first in the queue; the handed one held in the worker's name, its try
                # counted, the worker off the parked set, as lua/arq.lua's hand_off leaves them
                now_ms = int(time.time() * 1000)
                raws = {}
                for offset, job_id in enumerate((claimed, handed)):
                    raws[job_id] = serialize_job(
                        RUN_JOB, (), dict(job_args(pool)), None, now_ms, serializer=dumps
                    )
                    await r.set(keys.arq_job_prefix(pool) + job_id, raws[job_id])
                    await r.zadd(keys.queue(pool), {job_id: now_ms - 10_000 + offset})
                await r.set(keys.in_progress_prefix(pool) + handed, loop.worker_id, px=loop.hold_ms)
                await r.set(keys.retry_prefix(pool) + handed, 1)
                await r.hdel(parked, loop.worker_id)  # type: ignore[misc]
                # Redis holds every script (the claim) until the handoff has reached the worker
                await r.client_pause(WAIT_S * 1000, all=False)
                try:
                    loop._wake.set()
                    await until(lambda: loop._handed_meanwhile is not None, what="a claim")
                    # the handoff's message, as the worker's subscription hands it on
                    loop._handoff(f"{handed} 1 ".encode() + raws[handed])
                    await job.holding_runs.wait()
                finally:
                    await r.client_unpause()
                await heard(hold, b"del")  # the claim took the other job, and gave it back
                assert job.started == [(handed, 1)]
                assert await r.get(keys.retry_prefix(pool) + claimed) is None  # try undone
                job.release.set()
                await heard(arq_job, b"del")  # it ran once there was room, and ended
        finally:
            loop.stop()
            await served
    assert job.started == [(handed, 1), (claimed, 1)]
    assert job.most == 1
    assert await ended(r, pool, claimed)


async def test_an_idle_worker_parks_and_a_stopped_one_unparks(
    r: Redis, redis_url: str, pool: str
) -> None:
    """Parked (its id -> its hold) once its handoff channel is heard and nothing is due; out
    of the set once stopped."""

    async def done(ctx: dict[str, Any], **_: Any) -> None:
        pass

    loop = worker(redis_url, pool, [Function(RUN_JOB, done, LONG_S, max_tries=5)])
    parked = keys.parked(pool)
    async with r.pubsub() as pubsub:
        await pubsub.subscribe(f"__keyspace@{database(r)}__:{parked}")
        served = asyncio.create_task(loop.serve())
        async with asyncio.timeout(WAIT_S):
            async for message in pubsub.listen():
                if message["data"] == b"hset":
                    break
    assert await r.hget(parked, loop.worker_id) == str(loop.hold_ms).encode()  # type: ignore[misc]
    loop.stop()
    await served
    assert not await r.hexists(keys.parked(pool), loop.worker_id)  # type: ignore[misc]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_signal_hands_the_running_job_back_and_shuts_down(
    r: Redis, redis_url: str, pool: str, tmp_path: Path, sig: signal.Signals
) -> None:
    job_id, _ = await enqueue(r, pool)
    log = tmp_path / "worker.log"
    async with process(redis_url, pool, log) as child:
        assert await note(r, pool, log) == "started 1"
        child.send_signal(sig)
        async with asyncio.timeout(WAIT_S):
            assert await child.wait() == 0, await asyncio.to_thread(log.read_text)
    assert (await note(r, pool, log)).startswith(f"shutdown t-loop-{child.pid}-")  # its hook ran
    assert not [k async for k in r.scan_iter(match=keys.worker(f"t-loop-{child.pid}-*"))]
    # back in the queue at once, its try counted
    assert not await r.exists(keys.in_progress_prefix(pool) + job_id)
    assert await r.exists(keys.arq_job_prefix(pool) + job_id)
    assert await r.zscore(keys.queue(pool), job_id) is not None
    assert await r.get(keys.retry_prefix(pool) + job_id) == b"1"
    assert await runs_on_a_second_worker(r, redis_url, pool, job_id) == [2]
