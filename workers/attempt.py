"""One attempt at one claimed job: read arq's job, run its function under its timeout, and do
arq's bookkeeping, in arq's formats, under the pool's hash tag (``contract/keys.py``) instead of
arq's global prefixes, so that every key a claim or an attempt touches lies in the pool's slot.

What is read and written (arq 0.28's formats):

- ``keys.arq_job_prefix(pool) + id``: the job, written by the hub with
  ``arq.jobs.serialize_job`` (msgpack) and read here with ``arq.jobs.deserialize_job_raw``:
  function name, args, kwargs.
- ``keys.retry_prefix(pool) + id``: the tries so far, counted up (INCR) by the claim, which
  reads the job too (or by the handoff, which carries it).
- ``keys.in_progress_prefix(pool) + id``: set by the claim script (``workers/loop.py``), or by
  the hub's enqueue that hands the job to this worker; deleted when the attempt ends, whatever
  its outcome.
- the pool's queue (a sorted set scored by run-at ms): the job stays in it until it ends.

The outcomes are arq's:

- the function returns or raises (a timeout included): the job ends; its keys and queue entry
  go, and no result is kept (arq's ``keep_result=0``: the job record is the result). A function
  that sends a round trip as its last step may queue that ending on it (``ctx["end"](commands)``,
  after its own commands) and return ``ENDED``: one round trip fewer (the online reply does);
- ``arq.Retry(defer=...)``: it runs again, ``defer`` from now;
- ``CancelledError`` (the worker stopping, or the function): it runs again at once;
- past its function's ``max_tries``, a job the hub can no longer read, or one naming no
  registered function: it is dropped without running, as arq drops it.

arq's abort (``Job.abort``) and result keys are not used: the job store's cancel script stops
jobs, and the job record holds what they produced.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from arq import Retry
from arq.jobs import SerializationError, deserialize_job_raw
from redis.asyncio import Redis

from contract import keys
from contract.wire import loads
from workers.commands import Commands, round_trip

log = logging.getLogger(__name__)

ENDED = object()
"""What a job function returns once it queued its job's ending itself (``ctx["end"]``)."""


@dataclass(frozen=True)
class Function:
    """A job function, registered under the name the enqueuer gives (``serialize_job``'s first
    argument). It is called as ``coroutine(ctx, *args, **kwargs)``; ``ctx`` holds what the
    worker's start-up put there, plus ``job_id`` and ``job_try`` (1 on the first attempt)."""

    name: str
    coroutine: Callable[..., Awaitable[Any]]
    timeout_s: float
    max_tries: int


class Attempts:
    """Runs attempts at claimed jobs; ``stop`` cancels those running, and they go back to the
    queue (a job whose attempt has not reached its function yet goes back without running)."""

    def __init__(
        self,
        redis: Redis,
        pool: str,
        functions: Mapping[str, Function],
        ctx: dict[str, Any],
        ending: Callable[[str, Commands], None] | None = None,
    ) -> None:
        """``ending(id, commands)`` may queue the worker's own commands on the round trip that
        ends a job (the loop parks there again after a handoff)."""
        self.redis = redis
        self.ending = ending
        self.queue = keys.queue(pool)
        self.in_progress = keys.in_progress_prefix(pool)
        self.retry = keys.retry_prefix(pool)
        self.job = keys.arq_job_prefix(pool)
        self.functions = functions
        self.ctx = ctx
        self.stopping = False
        self._running: dict[str, asyncio.Task[Any]] = {}
        self._expired: set[str] = set()  # the running jobs their timeout canceled

    def stop(self) -> None:
        self.stopping = True
        for task in self._running.values():
            task.cancel()

    async def run(self, job_id: str, raw: bytes | None, job_try: int) -> None:
        """One attempt at the claimed job ``job_id``: its arq job (None if gone) and its try,
        as the claim read and counted them."""
        if raw is None:  # canceled after the claim read the queue, or expired
            log.warning("job %s: no such arq job; dropped", job_id)
            return await self._end(job_id)
        try:
            name, args, kwargs, _try, enqueued_ms = deserialize_job_raw(raw, deserializer=loads)
        except SerializationError:
            log.exception("job %s: cannot be read; dropped", job_id)
            return await self._end(job_id)
        function = self.functions.get(name)
        if function is None:
            log.warning("job %s: no function %r; dropped", job_id, name)
            return await self._end(job_id)
        if job_try > function.max_tries:
            log.warning("job %s: %d tries, the most %r has; dropped", job_id, job_try - 1, name)
            return await self._end(job_id)
        if self.stopping:  # stopped while the job was read
            return await self._requeue(job_id)

        ctx = {
            **self.ctx,
            "job_id": job_id,
            "job_try": job_try,
            "enqueued_ms": enqueued_ms,
            "end": functools.partial(self._queue_end, job_id),
        }
        # in the attempt's own task (no task to hop to and back): stop() cancels it while it
        # is in the function, and only then
        task = asyncio.current_task()
        assert task is not None
        self._running[job_id] = task
        # a timer that cancels the attempt rather than asyncio.timeout: 13 vs 48 µs on a worker
        # woken from sleep with cold caches (in process), on the way of every online batch
        timer = asyncio.get_running_loop().call_later(
            function.timeout_s, self._expire, job_id, task
        )
        try:
            try:
                if await function.coroutine(ctx, *args, **kwargs) is ENDED:
                    return None
            finally:
                timer.cancel()  # it bounds the function only, not the handling below
        except Retry as retry:
            return await self._requeue(job_id, retry.defer_score)
        except asyncio.CancelledError:
            task.uncancel()  # handled: the attempt goes on to end the job or hand it back
            if job_id in self._expired:
                log.warning("job %s: %r timed out after %g s", job_id, name, function.timeout_s)
            else:
                log.info("job %s canceled; it runs again", job_id)
                return await self._requeue(job_id)
        except Exception:
            log.exception("job %s: %r failed", job_id, name)
        finally:
            self._expired.discard(job_id)
            del self._running[job_id]
        await self._end(job_id)

    def _expire(self, job_id: str, task: asyncio.Task[Any]) -> None:
        self._expired.add(job_id)
        task.cancel()

    # Both below are one round trip without MULTI (two commands fewer a job): run in order, so
    # that no claim between them can take the job: out of the queue before its hold goes, or
    # due later before its hold goes.

    async def _end(self, job_id: str) -> None:
        commands = Commands()
        self._queue_end(job_id, commands)
        await self._send(commands)

    def _queue_end(self, job_id: str, commands: Commands) -> None:
        commands.zrem(self.queue, job_id)
        commands.delete(self.in_progress + job_id, self.retry + job_id, self.job + job_id)
        if self.ending is not None:
            self.ending(job_id, commands)

    async def _requeue(self, job_id: str, defer_ms: int | None = None) -> None:
        commands = Commands()
        if defer_ms:
            # XX: a job canceled meanwhile (gone from the queue) is not put back
            run_at = int(time.time() * 1000) + defer_ms
            commands.zadd(self.queue, {job_id: run_at}, xx=True)
        commands.delete(self.in_progress + job_id)
        await self._send(commands)

    async def _send(self, commands: Commands) -> None:
        for result in await round_trip(self.redis, commands):
            if isinstance(result, Exception):
                raise result
