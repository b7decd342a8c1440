"""The online lane: requests held in the hub's memory and sent to the workers in batches.

A request of ``/v2 infer`` has no record and no event log. It joins the *line* of its model
version and priority. A line sends a batch at once while fewer than its capacity are in flight
(one per worker serving the model), so a lone request never waits; once the line is full,
arriving requests gather into the next batch, which leaves when a batch in flight comes back,
or when the model's ``max_batch_size`` rows are in. So a busy line sends large batches, as
Triton's dynamic batcher holds requests while every instance is busy. A timer, or a second
batch in flight per worker, sent small ones: at C=32 on the heavy model, a 2 ms delay and two
in flight gave batches of 7.5 rows. The model's ``max_queue_delay_ms`` is its workers'
batcher's, which merges the batches and jobs that meet there. One batch is one arq job
(``contract.online``), queued in one round trip; the worker answers every request of it in one
publication on this hub's reply channel, read by the hub's one pub/sub connection
(``hub.fanout``).

A request that leaves before its batch is sent (its client went away, its deadline passed) is
not sent. A batch whose worker dies runs again elsewhere (arq and the reaper see to it) while
its requests' deadlines allow; a request past its deadline gets 503. An answer published while
the hub's subscription was down (Redis restarted, the connection dropped) reached nobody: once
it is back, every batch in flight is sent again (``on_gap``). Admission is bounded in rows
waiting or in flight per pool.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from contract import keys, scripts
from contract.connection import database
from contract.errors import InferenceFailed, Unavailable
from contract.jobstore import queue_score
from contract.online import Answer, BatchArgs, OnlineRequest, Reply, batch_payload
from contract.wire import loads
from hub.observer import NOBODY, Observer
from hub.tracing import carried

log = logging.getLogger(__name__)

Line = tuple[str, str, int]  # model, version, priority

ENQUEUE = scripts.load("enqueue")


@dataclass(eq=False)
class _Waiting:
    request: OnlineRequest
    rows: int
    line: _Queue
    future: asyncio.Future[Answer]
    batch: _Batch | None = None  # once sent


@dataclass(eq=False)
class _Batch:
    id: str
    line: _Queue
    requests: list[_Waiting]
    waiting: int = 0  # its requests not answered or gone yet
    earlier: list[str] = field(default_factory=list)  # its ids before it was sent again


@dataclass(eq=False)
class _Queue:
    """One line: the requests gathering for its next batch, and its batches in flight."""

    key: Line
    pool: str
    max_rows: int
    enqueue: scripts.Bound  # ENQUEUE, bound to the pool's keys
    capacity: int = 1
    pending: list[_Waiting] = field(default_factory=list)
    pending_rows: int = 0
    in_flight: int = 0


class OnlineLane:
    def __init__(
        self,
        redis: Redis,
        *,
        max_rows_per_pool: int,
        batches_per_worker: int = 1,
        observer: Observer = NOBODY,
    ) -> None:
        self.redis = redis
        self.db = database(redis)
        self.max_rows_per_pool = max_rows_per_pool
        self.batches_per_worker = batches_per_worker
        self.observer = observer
        self.hub_id = uuid.uuid4().hex
        self.reply_channel = keys.reply(self.hub_id)
        self._ids = itertools.count()  # request and batch ids: unique on this hub's channel
        self.batches = 0  # batches sent, for the metrics and the tests
        self._lines: dict[Line, _Queue] = {}
        self._in_flight: dict[str, _Batch] = {}
        self._rows: Counter[str] = Counter()  # per pool: rows waiting here or in flight
        self._sends: set[asyncio.Task[None]] = set()

    async def infer(
        self,
        entry: dict[str, Any],
        version: str,
        inputs: list[dict[str, Any]],
        *,
        rows: int,
        outputs: list[str] | None,
        priority: int,
        timeout_s: float,
        workers: int,
    ) -> list[dict[str, Any]]:
        """The packed outputs of one request, run in a batch by one of ``workers`` serving
        the model; an InferhubError if it failed, was refused or ran out of time."""
        pool = entry["pool"]
        if self._rows[pool] + rows > self.max_rows_per_pool:
            self.observer.online_answered(entry["name"], rows, 0.0, "refused")
            raise Unavailable(
                f"pool '{pool}' has {self._rows[pool]:,} rows of online requests in flight on "
                f"this hub (INFERHUB_ONLINE_MAX_ROWS {self.max_rows_per_pool:,}); retry shortly",
                "server_busy",
                headers={"Retry-After": "1"},
            )
        line = self._line(entry, version, priority)
        line.capacity = max(1, workers * self.batches_per_worker)
        request: OnlineRequest = {
            "id": str(next(self._ids)),
            "inputs": inputs,
            "outputs": outputs,
            "deadline": time.time() + timeout_s,
            **carried(),  # the request's trace, to the batch
        }
        loop = asyncio.get_running_loop()
        waiting = _Waiting(request, rows, line, loop.create_future())
        self._rows[pool] += rows
        line.pending.append(waiting)
        line.pending_rows += rows
        began = time.perf_counter()
        # a timer on the future: cheaper than asyncio.timeout's cancellation, per request
        timer = loop.call_later(timeout_s, _expire, waiting.future)
        try:
            alone = self._send_what_may_go(line, waiting)
            if alone is not None:
                await self._enqueue(alone)
            answer = await waiting.future
        except TimeoutError:
            seconds = time.perf_counter() - began
            self.observer.online_answered(entry["name"], rows, seconds, "timeout")
            raise Unavailable(
                f"request timeout expired: no answer within {timeout_s:g} s "
                f"(model '{entry['name']}')",
                "timeout",
            ) from None
        finally:
            timer.cancel()
            self._rows[pool] -= rows
            self._leave(waiting)
        outcome = "failed" if "error" in answer else "succeeded"
        # counted once this turn of the loop is over: the response is written by then
        seconds = time.perf_counter() - began
        loop.call_soon(self.observer.online_answered, entry["name"], rows, seconds, outcome)
        if "error" in answer:
            failed = InferenceFailed if answer.get("status", 500) == 500 else Unavailable
            raise failed(f"inference failed: {answer['error']}")
        return answer["outputs"]

    def _line(self, entry: dict[str, Any], version: str, priority: int) -> _Queue:
        key = (entry["name"], version, priority)
        line = self._lines.get(key)
        if line is None:
            pool = entry["pool"]
            line = _Queue(key, pool, entry["max_batch_size"], self._enqueue_script(pool))
            self._lines[key] = line
        return line

    def _enqueue_script(self, pool: str) -> scripts.Bound:
        """ENQUEUE with the pool's keys, encoded once: a batch's call names only its own."""
        return ENQUEUE.bind(
            self.redis,
            keys={
                "queue": keys.queue(pool),
                "parked": keys.parked(pool),
                "wake": keys.wake(pool, self.db),
            },
            args=keys.hand_off_args(pool, self.db),
        )

    def _send_what_may_go(self, line: _Queue, own: _Waiting | None = None) -> _Batch | None:
        """Send while the line has room in flight, or a full batch gathered; what is left
        gathers until a batch comes back. A batch of ``own`` alone is returned for its caller
        to queue (no task to hop to and back: a lone request's way); each other batch is
        queued by a task of its own, as its requests come and go."""
        alone = None
        while line.pending and (
            line.in_flight < line.capacity or line.pending_rows >= line.max_rows
        ):
            batch = self._take(line)
            if own is not None and batch.requests == [own]:
                alone = batch
            else:
                self._send_soon(batch)
        return alone

    def _send_soon(self, batch: _Batch) -> None:
        task = asyncio.create_task(self._enqueue(batch))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    def _take(self, line: _Queue) -> _Batch:
        """The next batch of the line's gathering requests, in flight from now."""
        taken: list[_Waiting] = []
        rows = 0
        while line.pending and (not taken or rows + line.pending[0].rows <= line.max_rows):
            waiting = line.pending.pop(0)
            taken.append(waiting)
            rows += waiting.rows
        line.pending_rows -= rows
        batch = _Batch(f"{self.hub_id}-{next(self._ids)}", line, taken, len(taken))
        for waiting in taken:
            waiting.batch = batch
        line.in_flight += 1
        self._in_flight[batch.id] = batch
        self.batches += 1
        # counted once this turn of the loop is over: the batch is on its way to Redis by then
        asyncio.get_running_loop().call_soon(
            self.observer.online_batch, line.key[0], len(taken), rows
        )
        return batch

    async def _enqueue(self, batch: _Batch) -> None:
        model, version, priority = batch.line.key
        args: BatchArgs = {
            "model": model,
            "version": version,
            "reply": self.reply_channel,
            "batch": batch.id,
            "requests": [w.request for w in batch.requests],
        }
        now_ms = int(time.time() * 1000)
        # the arq job outlives the last deadline a little, then expires unrun
        last = max(w.request["deadline"] for w in batch.requests)
        ttl_ms = max(1000, int(last * 1000) - now_ms + 1000)
        line = batch.line
        try:
            # handed to a parked worker if one idles (no wake-up, no claim), else queued
            await line.enqueue(
                keys={"job": keys.arq_job_prefix(line.pool) + batch.id},
                args={
                    "payload": batch_payload(args, now_ms),
                    "ttl_ms": ttl_ms,
                    "id": batch.id,
                    "score": queue_score(now_ms, priority),
                },
            )
        except (RedisError, OSError) as exc:
            log.warning("online batch %s not queued: %s", batch.id, exc)
            why = f"the queue is unavailable ({exc})"
            self._answer(batch, lambda w: _failed(w, why))

    def on_reply(self, raw: bytes) -> None:
        """A worker's answers to one batch (the fan-out's handler of the reply channel)."""
        reply: Reply = loads(raw)
        batch = self._in_flight.get(reply["batch"])
        if batch is None:
            return  # every request of it left already, or a re-run answered twice
        answers = {a["id"]: a for a in reply["answers"]}
        self._answer(batch, lambda w: answers.get(w.request["id"]) or _failed(w, "no answer"))

    def on_gap(self) -> None:
        """The reply channel was not heard for a while (the fan-out's subscription dropped
        and is back): an answer published meanwhile is lost. Every batch in flight is sent
        again, as a new arq job: the first answer of either run is taken (the other is not
        in flight any more), and a request is not left waiting for its deadline."""
        for batch in set(self._in_flight.values()):
            batch.earlier.append(batch.id)
            batch.id = f"{self.hub_id}-{next(self._ids)}"
            self._in_flight[batch.id] = batch
            self._send_soon(batch)

    def _answer(self, batch: _Batch, answer_of: Any) -> None:
        # retired first: the next batch's task is scheduled ahead of the answered requests'
        # wake-ups, so that it is on its way to the worker before the responses are encoded
        # and written (16 of the heavy model's took ~2 ms, the worker idle meanwhile)
        self._retire(batch)
        for waiting in batch.requests:
            if not waiting.future.done():
                waiting.future.set_result(answer_of(waiting))

    def _leave(self, waiting: _Waiting) -> None:
        """The request is answered or gone: off its line if it was not sent yet; its batch
        retires when none of its requests waits any more."""
        batch, line = waiting.batch, waiting.line
        if batch is None:
            line.pending.remove(waiting)
            line.pending_rows -= waiting.rows
        else:
            batch.waiting -= 1
            if not batch.waiting:
                self._retire(batch)

    def _retire(self, batch: _Batch) -> None:
        if self._in_flight.pop(batch.id, None) is not None:
            for earlier in batch.earlier:
                del self._in_flight[earlier]
            batch.line.in_flight -= 1
            self._send_what_may_go(batch.line)

    async def close(self) -> None:
        for task in list(self._sends):
            task.cancel()
        await asyncio.gather(*self._sends, return_exceptions=True)


def _expire(future: asyncio.Future[Answer]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


def _failed(waiting: _Waiting, why: str) -> Answer:
    return {"id": waiting.request["id"], "error": why, "status": 503}
