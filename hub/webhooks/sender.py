"""The webhook sender each hub runs: claim the deliveries that are due, send them, record each
attempt on its job, and retry the failed ones with exponential backoff.

A delivery is queued by the script that appends its event (``contract/lua/append.lua``), in the
sorted set of its pool (``keys.webhooks``) scored by when its next attempt is due, so no restart
loses one; the sender claims from every pool's.
Any hub claims it with a lease (``webhook_claim.lua``): no two hubs send one attempt at once,
and an attempt whose hub died runs again when the lease ends. A hub that stops hands its
claims back at once. Delivery is at least once: a hub that dies after the receiver answered,
before the answer is recorded, sends it again; receivers de-duplicate by ``webhook-id`` (the
event's id). Retries go on while the job lives (its TTL): a receiver that comes back within it
gets the event. Nothing here runs in a job's path: a slow receiver costs a sender slot only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import httpx
from redis.asyncio import Redis
from redis.exceptions import RedisError

from contract import keys, scripts
from contract.events import Event
from contract.jobstore import JobStore
from contract.logs import JOBS
from hub.webhooks import signing
from hub.webhooks.policy import WebhookPolicy
from hub.webhooks.targets import Refused

log = logging.getLogger(__name__)

CLAIM = scripts.load("webhook_claim")
DONE = scripts.load("webhook_done")

IDLE_POLL_S = 5.0  # a safety net: a wake-up published while the subscription was down is lost
LEASE_MARGIN_S = 10.0  # beyond one attempt's timeout, before another hub may take it over


@dataclass(frozen=True)
class Backoff:
    first_s: float
    max_s: float

    def delay_s(self, attempt: int) -> float:
        """The wait after failed attempt ``attempt`` (1, 2, ...): doubling up to ``max_s``,
        less up to a fifth at random, so that the retries to a receiver that comes back do not
        all arrive at once."""
        return min(self.max_s, self.first_s * 2 ** min(attempt - 1, 60)) * random.uniform(0.8, 1)


@dataclass(frozen=True)
class Outcome:
    status: int | None = None  # the receiver's HTTP status, if it answered
    error: str = ""  # why there is no answer to count as delivered

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class WebhookSender:
    def __init__(
        self,
        redis: Redis,
        store: JobStore,
        policy: WebhookPolicy,
        *,
        timeout_s: float,
        backoff: Backoff,
        concurrency: int,
    ) -> None:
        self.redis = redis
        self.store = store
        self.policy = policy
        self.timeout_s = timeout_s
        self.backoff = backoff
        self.concurrency = concurrency
        self.lease_ms = int((timeout_s + LEASE_MARGIN_S) * 1000)
        # no proxies from the environment (the address checks would not hold through one), no
        # redirects (a receiver's 3xx is an answer, not a hop to an unchecked address)
        self.client = httpx.AsyncClient(timeout=timeout_s, follow_redirects=False, trust_env=False)
        self._woken = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._claims: dict[asyncio.Task[None], tuple[str, int]] = {}  # in flight: member, lease

    def wake(self, _message: bytes = b"") -> None:
        """A delivery was queued (the fanout hands over the channel's messages)."""
        self._woken.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="webhook-sender")

    async def stop(self) -> None:
        """Stop sending, and hand back what is in flight so that any hub sends it at once."""
        tasks = [t for t in (self._task, *self._claims) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for member, lease in self._claims.values():
            with contextlib.suppress(RedisError, OSError):
                await self._done(member, lease, None, retry=member, delay_s=0)
        self._claims.clear()
        await self.client.aclose()

    async def _run(self) -> None:
        while True:
            self._woken.clear()
            wait_ms = -1
            try:
                pools = await self.store.pools()
            except (RedisError, OSError) as exc:
                log.warning("webhook sender: cannot list the pools (%s)", exc)
                pools, wait_ms = [], 1000
            for pool in pools:
                free = self.concurrency - len(self._claims)
                if free <= 0:
                    break
                try:
                    lease, pool_wait_ms, members = await CLAIM(
                        self.redis,
                        keys={"due": keys.webhooks(pool)},
                        args={"lease_ms": self.lease_ms, "count": free},
                    )
                except (RedisError, OSError) as exc:
                    log.warning("webhook sender: cannot claim deliveries (%s)", exc)
                    pool_wait_ms = 1000
                else:
                    for raw in members:
                        member = raw.decode()
                        task = asyncio.create_task(self._deliver(member, lease))
                        self._claims[task] = (member, lease)
                        task.add_done_callback(self._finished)
                if pool_wait_ms >= 0:
                    wait_ms = pool_wait_ms if wait_ms < 0 else min(wait_ms, pool_wait_ms)
            timeout = IDLE_POLL_S if wait_ms < 0 else min(IDLE_POLL_S, wait_ms / 1000)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._woken.wait()

    def _finished(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled():
            self._claims.pop(task, None)
            self._woken.set()  # a slot is free
            if task.exception() is not None:
                log.error("webhook delivery failed", exc_info=task.exception())

    async def _deliver(self, member: str, lease: int) -> None:
        job_id, event_id, attempt_text = member.split(" ")
        attempt = int(attempt_text)
        record = await self.store.get(job_id)
        event = await self.store.event(job_id, event_id) if record else None
        if record is None or event is None or "webhook_url" not in record:
            # the job expired (its TTL bounds the retries), or its event was trimmed
            await self._done(member, lease, Outcome(error="the event has expired"))
            return
        outcome = await self._send(record, event)
        retry = "" if outcome.delivered else f"{job_id} {event_id} {attempt + 1}"
        await self._done(member, lease, outcome, retry=retry, delay_s=self.backoff.delay_s(attempt))
        why = outcome.error or f"HTTP {outcome.status}"
        JOBS.info(
            "webhook %s",
            "delivered" if outcome.delivered else f"not delivered: {why}",
            extra={"event": "webhook", "job_id": job_id, "attempt": attempt},
        )

    async def _send(self, record: dict[str, Any], event: Event) -> Outcome:
        secret = self.policy.secret(record["owner"])
        if secret is None:
            return Outcome(error=f"this hub has no webhook secret for tenant '{record['owner']}'")
        body = event.json
        signed = signing.headers(secret, event.id, int(time.time()), body)
        try:
            async with asyncio.timeout(self.timeout_s):
                targets = await self.policy.targets.resolve(record["webhook_url"])
                error = ""
                for target in targets:  # each address of the name, as a browser would
                    try:
                        return await self._post(
                            target.url, body, {**target.headers, **signed}, target.extensions
                        )
                    except httpx.ConnectError as exc:
                        error = f"cannot connect to {target.url.host}: {exc}"
                return Outcome(error=error)
        except Refused as exc:
            return Outcome(error=exc.message)
        except TimeoutError:
            return Outcome(error=f"no answer within {self.timeout_s:g} s")
        except httpx.HTTPError as exc:
            return Outcome(error=f"{type(exc).__name__}: {exc}")

    async def _post(
        self, url: httpx.URL, body: bytes, headers: dict[str, str], extensions: dict[str, str]
    ) -> Outcome:
        headers = {**headers, "content-type": "application/json", "user-agent": "inferhub"}
        request = self.client.build_request(
            "POST", url, content=body, headers=headers, extensions=extensions
        )
        # the status is all that counts: the body is never read, whatever its size
        response = await self.client.send(request, stream=True)
        await response.aclose()
        return Outcome(status=response.status_code)

    async def _done(
        self,
        member: str,
        lease: int,
        outcome: Outcome | None,
        *,
        retry: str = "",
        delay_s: float = 0.0,
    ) -> None:
        """Record an attempt (``outcome``; None: handed back unsent) and queue ``retry``."""
        job_id = member.split(" ", 1)[0]
        await DONE(
            self.redis,
            keys={"due": keys.webhooks(keys.pool_of(job_id)), "record": keys.job(job_id)},
            args={
                "member": member,
                "lease": lease,
                "attempted": 0 if outcome is None else 1,
                "status": (outcome.status or "") if outcome else "",
                "error": outcome.error[:500] if outcome else "",
                "delivered_at": time.time() if outcome and outcome.delivered else "",
                "next": retry,
                "delay_ms": int(delay_s * 1000),
            },
        )
