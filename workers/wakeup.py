"""An arq worker that is woken by a publication when a job is queued, instead of polling fast;
that claims the jobs it finds in one round trip; and that outlives a Redis outage.

arq finds jobs by polling its queue every ``poll_delay``. Here the hub publishes on the pool's
wake channel in the same script that queues the job; the worker listens and polls at once. The
regular poll stays as a safety net at a slow interval, so an idle worker sends few commands.

arq claims each job with WATCH, EXISTS, ZSCORE and MULTI/EXEC: four round trips a job. Here one
Lua script claims for the whole poll: it reads the due jobs itself, in score order, skips those
another worker holds (their in-progress key exists) and takes free ones until this worker's room
is full, however far into the queue that is (given only the first ids arq read, a worker beside a
busy one found them all held and took nothing). It sets arq's in-progress keys, so arq's own
``run_job`` takes it from there; their value is the claiming worker's id (arq only tests whether
the key exists), so that ``workers/reaper.py`` can hand back the jobs of a worker that died after
claiming them, started or not. A worker claims nothing while its own heartbeat record is missing
(before its first beat, or after a lapse): the reaper would take those jobs back at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from arq.constants import in_progress_key_prefix
from arq.utils import timestamp_ms
from arq.worker import Worker
from redis.exceptions import RedisError

from contract import keys, scripts
from contract.connection import connect

log = logging.getLogger(__name__)


CLAIM = scripts.load("claim")

CLAIM_PAGE = 256
"""Queue entries read per step of the claim script."""


class PushWorker(Worker):
    def __init__(
        self, *, wake_channel: str, redis_url: str, worker_id: str, **kwargs: object
    ) -> None:
        # arq's own read of the queue only tells whether any job is due: the claim script
        # reads the queue itself, so one id is enough
        kwargs.setdefault("queue_read_limit", 1)
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.wake_channel = wake_channel
        self.redis_url = redis_url
        self.worker_id = worker_id

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """Claim up to the room there is of the due jobs no worker holds, in one round trip,
        and run them. ``job_ids`` (arq's read of the queue) only says whether any is due."""
        room = self.max_jobs - self.job_counter
        if room <= 0 or not job_ids:
            return
        self.job_counter += room  # reserved now: a concurrent poll must not claim past max_jobs
        try:
            claimed = await CLAIM(
                self.pool,
                keys={"queue": self.queue_name, "heartbeat": keys.worker(self.worker_id)},
                args={
                    "in_progress_prefix": in_progress_key_prefix,
                    "in_progress_ms": int(self.in_progress_timeout_s * 1000),
                    "now_ms": timestamp_ms(),
                    "room": room,
                    "worker_id": self.worker_id,
                    "page": CLAIM_PAGE,
                },
            )
        finally:
            self.job_counter -= room
        for job_id, score in zip(claimed[::2], claimed[1::2], strict=True):
            await self.sem.acquire()  # never waits: job_counter < max_jobs < the semaphore
            self.job_counter += 1
            task = self.loop.create_task(self.run_job(job_id.decode(), int(float(score))))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id.decode()] = task

    async def main(self) -> None:
        listener = asyncio.create_task(self._listen(), name="wake")
        try:
            await super().main()
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

    async def _poll_iteration(self) -> None:
        # arq lets a Redis error end its main loop, and so the worker: ride out the outage
        try:
            await super()._poll_iteration()
        except (RedisError, OSError) as exc:
            log.warning("polling failed (%s); retrying", exc)

    async def _listen(self) -> None:
        redis = connect(self.redis_url)
        backoff = 0.05
        try:
            while True:
                try:
                    async with redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                        await pubsub.subscribe(self.wake_channel)
                        backoff = 0.05
                        while True:
                            if await pubsub.get_message(timeout=None) is None:
                                continue
                            while await pubsub.get_message(timeout=0.0) is not None:
                                pass  # a burst of queued jobs needs one poll, not one each
                            if self._pool is not None and self.allow_pick_jobs:
                                await self._poll_iteration()
                except (RedisError, OSError) as exc:
                    log.warning("wake-up channel lost (%s); polling meanwhile", exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
        finally:
            await redis.aclose()
