"""An arq worker that is woken by a publication when a job is queued, instead of polling fast,
and that outlives a Redis outage.

arq finds jobs by polling its queue every ``poll_delay``. Here the hub publishes on the pool's
wake channel in the same script that queues the job; the worker listens and polls at once. The
regular poll stays as a safety net at a slow interval, so an idle worker sends few commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from arq.worker import Worker
from redis.exceptions import RedisError

from hub.redisconn import connect

log = logging.getLogger(__name__)


class PushWorker(Worker):
    def __init__(self, *, wake_channel: str, redis_url: str, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.wake_channel = wake_channel
        self.redis_url = redis_url

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
