"""The worker's own loop: it claims the due jobs of its pool in one round trip, is woken when a
job is queued or handed a job while idle, outlives Redis outages, and on SIGINT or SIGTERM
hands its running jobs back.

It replaces arq's ``Worker`` (which it used to subclass, reaching into its private fields) and
keeps arq's job format and bookkeeping, under its pool's hash tag (``contract/keys.py``): every
key a claim touches lies in one slot of a Redis Cluster, and redis-py's cluster client sends it
to the node that owns that slot, following a resharding or a failover (MOVED, ASK).
``workers/attempt.py`` runs each job and does arq's bookkeeping. docs/operations.md says what of arq is used, and why.

- **Wake-up.** The hub publishes on the pool's wake channel in the script that queues a job; the
  worker listens and claims at once. A poll every ``poll_delay_s`` stays as a safety net (a lost
  publication, a deferred retry), so an idle worker sends few commands.
- **Claim.** One Lua script (``contract/lua/claim.lua``) reads the due jobs in score order,
  skips those another worker holds (their in-progress key exists) and takes free
  ones until this worker's room is full, however far into the queue that is; with each it
  returns the arq job and counts the try, so an attempt needs no round trip to start. The in-progress
  key's value is the claiming worker's id, so that ``workers/reaper.py`` can hand back the jobs
  of a worker that died after claiming them, started or not; it expires after the longest
  function timeout + 10 s, as arq's does. A worker claims nothing while its own heartbeat
  lease (``keys.worker_lease``, beside its record) is missing (before its first beat, or after
  a lapse): the reaper would take those jobs
  back at once. A worker whose room was full claims again as soon as a job ends.
- **Handoff.** A claim that leaves room once nothing more is due *parks* the worker (in
  ``keys.parked``, in the same script) while it hears its own channel (``keys.handoff``, beside
  the wake channel on one subscription). The scripts that queue an arq job (the hub's online
  enqueue and its job creations: ``contract/lua/arq.lua``'s ``hand_off``) take a parked worker
  off the set, claim the job on its behalf (in-progress key, try) and publish it on that
  channel, where the worker starts it: no wake-up and no claim round trip on the way of a lone
  request or job. The worker parks again with the handed job's end (in the
  round trip of its reply), or by a claim when more may be due. A worker whose subscription is
  down does not park (the enqueue also passes over a worker that nobody hears); a handoff lost
  with a connection is held in its name, and its next claim (one follows every
  resubscription) takes it as claimed. ``max_jobs`` holds across the two ways in: a handoff
  that crossed a claim which filled the room (the claim was on its way as the hub took the
  worker off the parked set), or a claim's job that a handoff's took the room of, is given
  back (``contract/lua/give_back.lua``: its hold and its try undone, the pool woken) before
  the next claim, and runs when a worker has room. A handed job that parked with its end
  leaves its room to the next handoff while that end's reply is on its way.
- **Outages.** A failed claim is logged and tried again at the next poll; the wake channel
  reconnects with backoff; a worker started before Redis waits for it (30 tries, 1 s apart).
- **Stop.** ``stop`` (SIGINT, SIGTERM) ends claiming and cancels the running jobs: each goes
  back to the queue at once (its in-progress key deleted) and runs again on another worker with
  ``attempt`` + 1. The worker leaves the parked set, and gives back a job handed to it that it
  has not started. Then the shutdown hook runs and the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from contract import keys, scripts
from contract.channels import Subscriber, sharded
from contract.connection import connect, database
from workers.attempt import Attempts, Function
from workers.commands import Commands
from workers.reaper import release

log = logging.getLogger(__name__)

CLAIM = scripts.load("claim")
GIVE_BACK = scripts.load("give_back")

CLAIM_PAGE = 256
"""Queue entries read per step of the claim script."""

HOLD_EXTRA_S = 10.0
"""An in-progress key outlives the longest function timeout by this much (arq's figure)."""

Hook = Callable[[dict[str, Any]], Awaitable[None]]
"""A start-up or shutdown hook; its ``ctx`` (with ``redis``) is given to every job."""


class WorkerLoop:
    def __init__(
        self,
        functions: Sequence[Function],
        *,
        redis_url: str,
        pool: str,
        worker_id: str,
        max_jobs: int,
        poll_delay_s: float,
        on_startup: Hook | None = None,
        on_shutdown: Hook | None = None,
    ) -> None:
        self.functions = {f.name: f for f in functions}
        self.redis_url = redis_url
        self.queue = keys.queue(pool)
        self.parked = keys.parked(pool)
        self.pool = pool
        self.worker_id = worker_id
        self.max_jobs = max_jobs
        self.poll_delay_s = poll_delay_s
        self.on_startup = on_startup
        self.on_shutdown = on_shutdown
        self.hold_ms = int((max(f.timeout_s for f in functions) + HOLD_EXTRA_S) * 1000)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._attempts: Attempts | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self._backlog = False  # the last claim filled the room: more jobs may be due
        self._heard = False  # the handoff channel is subscribed: the claim may park
        # the jobs handed while a claim is on its way, which it may return too (the claim
        # takes a job held in this worker's name that it does not run)
        self._handed_meanwhile: set[str] | None = None
        self._handed: dict[str, bool] = {}  # the handed jobs running -> parked with their end
        self._give_back: set[str] = set()  # held in its name, no room to run them: given back

    def running(self) -> list[str]:
        """The ids of the jobs this worker runs now (the reaper keeps its claims on them)."""
        return list(self._tasks)

    def stop(self) -> None:
        """Claim no more; cancel the running jobs, which go back to the queue."""
        if not self._stopping:
            log.info("stopping: %d running jobs go back to the queue", len(self._tasks))
        self._stopping = True
        self._wake.set()
        if self._attempts is not None:
            self._attempts.stop()

    async def serve(self) -> None:
        """Start up, claim and run jobs until ``stop``, then shut down."""
        redis = connect(self.redis_url)
        try:
            if await self._reached(redis):
                await self._serve(redis)
        finally:
            await redis.aclose()

    async def _serve(self, redis: Redis) -> None:
        ctx: dict[str, Any] = {"redis": redis}
        self._attempts = Attempts(redis, self.pool, self.functions, ctx, self._park_again)
        try:
            if self.on_startup is not None:
                await self.on_startup(ctx)
            listener = asyncio.create_task(self._listen(), name="wake")
            try:
                await self._claim_until_stopped(redis)
            finally:
                listener.cancel()  # unsubscribed: no handoff is heard from now on
                with contextlib.suppress(asyncio.CancelledError):
                    await listener
                # each attempt ends with its bookkeeping; _ended logs any failure
                await asyncio.gather(*self._tasks.values(), return_exceptions=True)
                await self._unpark(redis)
        finally:
            if self.on_shutdown is not None:
                await self.on_shutdown(ctx)

    async def _reached(self, redis: Redis, tries: int = 30) -> bool:
        """Wait for Redis (a worker may start first); False if stopped meanwhile."""
        attempt = 1
        while True:
            try:
                await redis.ping()
                return True
            except (RedisError, OSError) as exc:
                if attempt == tries:
                    raise
                log.warning("redis unreachable (%s): try %d of %d", exc, attempt, tries)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._wake.wait()  # set by stop
            if self._stopping:
                return False
            attempt += 1

    async def _claim_until_stopped(self, redis: Redis) -> None:
        while not self._stopping:
            self._wake.clear()  # a wake-up during the claim below makes the next one at once
            try:
                await self._claim(redis)
            except (RedisError, OSError) as exc:
                log.warning("claiming failed (%s); retrying", exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_delay_s):
                    await self._wake.wait()

    def _full(self) -> bool:
        """Whether ``max_jobs`` run: a handed job that parked with its end runs no more."""
        return len(self._tasks) - sum(self._handed.values()) >= self.max_jobs

    async def _claim(self, redis: Redis) -> None:
        """Give back what it has no room for; claim up to the room there is of the due jobs
        no worker holds, and run them."""
        if self._give_back:
            await self._give_back_held(redis)
        room = self.max_jobs - len(self._tasks)
        self._backlog = room <= 0
        if room <= 0:
            return
        self._handed_meanwhile = set()
        try:
            claimed = await CLAIM(
                redis,
                keys={
                    "queue": self.queue,
                    "heartbeat": keys.worker_lease(self.pool, self.worker_id),
                    "parked": self.parked,
                },
                args={
                    "in_progress_prefix": keys.in_progress_prefix(self.pool),
                    "in_progress_ms": self.hold_ms,
                    "now_ms": int(time.time() * 1000),
                    "room": room,
                    "worker_id": self.worker_id,
                    "page": CLAIM_PAGE,
                    "job_prefix": keys.arq_job_prefix(self.pool),
                    "retry_prefix": keys.retry_prefix(self.pool),
                    "retry_ttl_s": keys.RETRY_TTL_S,
                    "park": int(self._heard and not self._stopping),
                    "running": list(self._tasks),  # held by this worker: skipped at no cost
                },
            )
            handed = self._handed_meanwhile
        finally:
            self._handed_meanwhile = None
        self._backlog = len(claimed) // 4 == room
        for i in range(0, len(claimed), 4):  # {id, score, arq job, tries, ...}
            job_id = claimed[i].decode()
            if job_id in handed:
                continue  # started (and maybe ended) from its handoff
            if self._full():  # handoffs meanwhile took the room
                self._give_back.add(job_id)
                self._wake.set()
            else:
                self._give_back.discard(job_id)  # a handoff given back, the claim's after all
                self._start(job_id, claimed[i + 2], claimed[i + 3])

    async def _give_back_held(self, redis: Redis) -> None:
        ids = sorted(self._give_back)
        given = await GIVE_BACK(
            redis,
            keys={"wake": keys.wake(self.pool, database(redis))},
            args={
                "in_progress_prefix": keys.in_progress_prefix(self.pool),
                "retry_prefix": keys.retry_prefix(self.pool),
                "worker_id": self.worker_id,
                "ids": ids,
            },
        )
        self._give_back.difference_update(ids)
        for job_id in given:
            log.info(
                "job %s: no room for it here (max_jobs %d); given back",
                job_id.decode(),
                self.max_jobs,
            )

    def _start(self, job_id: str, raw: bytes | None, tries: int) -> None:
        assert self._attempts is not None
        task = asyncio.create_task(self._attempts.run(job_id, raw, tries), name=f"job {job_id}")
        self._tasks[job_id] = task
        task.add_done_callback(functools.partial(self._ended, job_id))

    def _handoff(self, message: bytes) -> None:
        """A job the hub claimed for this worker (``contract/lua/arq.lua``'s ``hand_off``): run it."""
        job_id_bytes, tries, raw = message.split(b" ", 2)
        job_id = job_id_bytes.decode()
        if self._stopping or job_id in self._tasks:
            return  # stopping: _unpark gives it back; else the claim took it first
        if self._full():  # it crossed a claim that filled the room
            self._give_back.add(job_id)
            self._wake.set()
            return
        if self._handed_meanwhile is not None:
            self._handed_meanwhile.add(job_id)
        self._handed[job_id] = False
        self._start(job_id, raw, int(tries))

    def _park_again(self, job_id: str, commands: Commands) -> None:
        """With the end of a handed job, park again (no claim after it), unless more jobs may
        be due or the handoffs are not heard."""
        if job_id in self._handed and self._heard and not (self._backlog or self._stopping):
            commands.hset(self.parked, self.worker_id, str(self.hold_ms))
            self._handed[job_id] = True

    def _ended(self, job_id: str, task: asyncio.Task[None]) -> None:
        del self._tasks[job_id]
        parked = self._handed.pop(job_id, None)  # None: claimed, not handed
        error = None if task.cancelled() else task.exception()
        if error is not None:
            # Redis failed it before or after the job ran: the in-progress key, left as it
            # is, keeps the job from others; this worker's next claim takes it again
            log.warning("job %s: attempt failed (%s: %s)", job_id, type(error).__name__, error)
        # more may be due; or a claim parks it again after a handoff
        if self._backlog or (parked is not None and (not parked or error is not None)):
            self._wake.set()

    async def _unpark(self, redis: Redis) -> None:
        """Leave the parked set, then give back the jobs handed before that and not started
        (the last claim and job ends, which may park it, are over)."""
        try:
            await redis.hdel(self.parked, self.worker_id)  # type: ignore[misc]  # redis-py types sync and async as one
            # -1: every hold of this worker's on a job it does not run, however recent
            for job_id in await release(redis, self.pool, self, grace_ms=-1):
                log.info("job %s: handed to this worker as it stopped; given back", job_id)
        except (RedisError, OSError) as exc:
            # its lease goes with the shutdown hook: then the reaper of another worker
            # releases what it holds, and the hub hands it nothing more
            log.warning("could not leave the parked workers (%s)", exc)

    async def _listen(self) -> None:
        """Read the wake channel and this worker's handoff channel (one slot: one subscription)."""
        redis = connect(self.redis_url)
        wake = keys.wake(self.pool, database(redis))
        handoff = keys.handoff(self.pool, self.worker_id, database(redis))
        handed = handoff.encode()
        backoff = 0.05
        try:
            while True:
                try:
                    async with Subscriber(redis) as channels:
                        await channels.subscribe(wake, handoff)
                        backoff = 0.05
                        # plain pub/sub on a cluster counts one node's subscribers only: the
                        # hub could not tell whether a handoff is heard (lua/arq.lua's hand_off)
                        self._heard = not isinstance(redis, RedisCluster) or await sharded(redis)
                        self._wake.set()  # claim: a handoff may have been lost meanwhile

                        def heard(channel: bytes, data: bytes) -> None:
                            if channel == handed:
                                self._handoff(data)
                            else:
                                self._wake.set()

                        channels.deliver_to(heard)
                        await channels.until_lost()
                except (RedisError, OSError) as exc:
                    self._heard = False
                    log.warning("wake-up channel lost (%s); polling meanwhile", exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
        finally:
            self._heard = False
            await redis.aclose()


def serve_until_signalled(worker: WorkerLoop) -> None:
    """Run ``worker`` in a new event loop until SIGINT or SIGTERM has stopped it."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, worker.stop)
        await worker.serve()

    asyncio.run(main())
