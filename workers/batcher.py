"""Dynamic batching: the rows of concurrent jobs of one model run as one onnxruntime call.

One ``Batcher`` per model version, as MLServer's adaptive batcher: a queue and a future per
request. A batch is flushed when it reaches ``preferred_batch_size`` rows, or when no more rows
are coming (every job of the model that is running has its rows in: queued, running, or
answered and not yet taken up by the job), or at the latest ``max_queue_delay_ms`` after its
first request; it never exceeds ``max_batch_size`` rows. So a lone request runs at once,
concurrent ones share a call, and a batch queued behind another runs as soon as the other
ends, not after the delay. The call runs in a thread (onnxruntime releases the GIL) so that
the event loop keeps serving Redis.

If a batch fails, its requests run one by one, so that a bad request fails only its own job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from workers.heartbeat import BATCH_BUCKETS, INFERENCE_BUCKETS, Histogram
from workers.stats import Counts, Waiting

log = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]

INLINE_BELOW_S = 0.0002


@dataclass
class _Request:
    inputs: Arrays
    rows: int
    future: asyncio.Future[Arrays] | None = field(default=None, repr=False)  # None: run inline
    waiting: Waiting = field(default_factory=Waiting, repr=False)  # for the statistics


class _Expecting:
    """``Batcher.expecting``: a class, not a generator's context manager (~10 vs ~25 µs on a
    worker woken from sleep with cold caches, in process), on the way of every request."""

    __slots__ = ("batcher", "requests")

    def __init__(self, batcher: Batcher, requests: int) -> None:
        self.batcher = batcher
        self.requests = requests

    def __enter__(self) -> None:
        self.batcher._active += self.requests
        self.batcher._coming += self.requests

    def __exit__(self, *exc: object) -> None:
        batcher = self.batcher
        batcher._active -= self.requests
        batcher._coming -= self.requests
        if not batcher._active:
            batcher._quiet.set()
        if batcher._holding:  # a batch gathering may wait for this job's rows no more
            batcher._wake()


class Batcher:
    def __init__(
        self,
        session: Any,
        *,
        max_batch_size: int,
        preferred_batch_size: int,
        max_queue_delay_ms: float,
        batchable: bool = True,
        counts: Counts | None = None,
    ) -> None:
        self.session = session
        # onnxruntime's binding itself, without InferenceSession.run's checks in Python (a
        # captured graph; each input's name and type read through the binding, which checks
        # them again): 1 µs in a tight loop, but 20 of a tiny model's 60 µs on a worker woken
        # from sleep with cold caches (in process, 1 ms asleep before each call)
        self._infer = getattr(session, "_sess", session).run
        self.batchable = batchable
        self.output_names = [o.name for o in session.get_outputs()]
        self.max_batch_size = max_batch_size
        # a model whose rows cannot be joined runs each request alone
        self.preferred = min(preferred_batch_size, max_batch_size) if batchable else 1
        self.max_delay_s = max_queue_delay_ms / 1000
        self.batches = 0  # how many onnxruntime calls, for the tests and the metrics
        self.seconds = Histogram(INFERENCE_BUCKETS)  # per onnxruntime call, for the metrics
        self.rows = Histogram(BATCH_BUCKETS)
        self.counts = counts or Counts()  # Triton's statistics (workers/stats.py)
        self._queue: deque[_Request] = deque()
        self._waiter: asyncio.Future[bool] | None = None  # the loop's, while it waits
        self._active = 0  # requests of running jobs (``expecting``)
        # of those, the ones whose rows are not in yet: neither queued, nor running, nor
        # answered and yet to be taken up by their job (which may queue more, or end)
        self._coming = 0
        self._quiet = asyncio.Event()  # set when _active drops to 0
        self._seconds_per_row = float("inf")  # unknown until the first call, made in a thread
        self._holding = False  # the loop gathers or runs a batch
        self._task: asyncio.Task[None] | None = None

    def expecting(self, requests: int = 1) -> _Expecting:
        """Mark requests of this model as running: the batcher may wait for their rows."""
        return _Expecting(self, requests)

    async def drained(self) -> None:
        """Return once no request is running here (a batcher replaced by a new version of its
        model, or unloaded, closes then: workers/serving.py)."""
        while self._active:
            self._quiet.clear()
            await self._quiet.wait()

    async def run_rows(
        self,
        inputs: Arrays,
        progress: Callable[[int, int, Arrays], Awaitable[bool]] | None = None,
    ) -> Arrays | None:
        """Run every row of ``inputs``, in chunks of at most ``max_batch_size``. After each
        chunk of a request of several, ``progress(done, total, chunk)`` (the chunk's outputs)
        may say to stop (False): then None is returned."""
        total = len(next(iter(inputs.values())))
        step = self.max_batch_size if self.batchable else total
        chunks: list[Arrays] = []
        for start in range(0, total, step):
            chunks.append(await self.run({n: a[start : start + step] for n, a in inputs.items()}))
            done = min(start + step, total)
            if progress is not None and total > step:
                go_on = await progress(done, total, chunks[-1])  # after the last one too
                if not go_on and done < total:
                    return None
        if len(chunks) == 1:
            return chunks[0]
        return {n: np.concatenate([c[n] for c in chunks]) for n in self.output_names}

    def run_now(self, inputs: Arrays) -> Arrays | None:
        """The outputs of every row of ``inputs``, run here and now (as ``run_rows`` would, in
        one call) when nothing else of the model runs here and it is quick (``_alone``); else
        None: then ``run_rows``. A caller's timeout cannot cut such a run, which never waits."""
        rows = len(next(iter(inputs.values())))
        if (self.batchable and rows > self.max_batch_size) or not self._alone(rows):
            return None
        # nothing to join and quick: run here, not through the loop's task and back
        return self._call([_Request(inputs, rows)])[0]

    async def run(self, inputs: Arrays) -> Arrays:
        """Run the rows of ``inputs`` (at most ``max_batch_size``) with other requests' rows."""
        now = self.run_now(inputs)
        if now is not None:
            return now
        rows = len(next(iter(inputs.values())))
        future: asyncio.Future[Arrays] = asyncio.get_running_loop().create_future()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop(), name="batcher")
        self._queue.append(_Request(inputs, rows, future))
        self._coming -= 1
        self._wake()
        try:
            return await future
        finally:
            self._coming += 1  # its job goes on: it may queue more rows, or end

    def _alone(self, rows: int) -> bool:
        """Whether these rows are the only ones of the model running here, or about to (the
        caller's own ``expecting``), and would run inline (``_off_loop``)."""
        return (
            not self._holding
            and not self._queue
            and self._active <= 1
            and self._seconds_per_row * rows < INLINE_BELOW_S
        )

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        queue = self._queue
        carry: _Request | None = None
        while True:
            self._holding = carry is not None
            while carry is None and not queue:
                await self._wait()
            first = carry or queue.popleft()
            self._holding = True
            batch, rows, carry = [first], first.rows, None
            deadline = asyncio.get_running_loop().time() + self.max_delay_s
            while rows < self.preferred:
                if not queue:
                    if self._coming <= 0:
                        break  # every running job has its rows in: waiting gains nothing
                    if not await self._wait(deadline):
                        break
                    continue  # a request came, or a running job ended (its rows need not)
                request = queue.popleft()
                if rows + request.rows > self.max_batch_size:
                    carry = request
                    break
                batch.append(request)
                rows += request.rows
            batch = [r for r in batch if r.future is None or not r.future.cancelled()]
            if batch:
                await self._run(batch)

    async def _wait(self, deadline: float | None = None) -> bool:
        """Until a request is queued or a running job ends (``_wake``): True; or until the
        loop's clock reaches ``deadline``: False."""
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        timer = None if deadline is None else loop.call_at(deadline, _settle_waiter, waiter, False)
        try:
            return await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def _wake(self) -> None:
        if self._waiter is not None:
            _settle_waiter(self._waiter, True)

    async def _off_loop(self, batch: list[_Request]) -> list[Arrays]:
        """Run the batch in a thread, or inline when it will take less than a thread hop is
        worth: a tiny model answers in microseconds, and blocking the loop that long is cheaper
        than handing over to a thread and back."""
        rows = sum(r.rows for r in batch)
        if self._seconds_per_row * rows < INLINE_BELOW_S:
            return self._call(batch)
        return await asyncio.to_thread(self._call, batch)

    async def _run(self, batch: list[_Request]) -> None:
        try:
            results = await self._off_loop(batch)
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0], exc)
                return
            # find the culprit: each request alone, so the others still succeed
            for request in batch:
                try:
                    _settle(request, (await self._off_loop([request]))[0])
                except Exception as single:
                    _settle(request, single)
            return
        for request, result in zip(batch, results, strict=True):
            _settle(request, result)

    def _call(self, batch: list[_Request]) -> list[Arrays]:
        self.batches += 1
        joined = time.perf_counter()
        if len(batch) == 1:
            feed = batch[0].inputs
        else:
            feed = {n: np.concatenate([r.inputs[n] for r in batch]) for n in batch[0].inputs}
        began = time.perf_counter()
        outputs = self._infer(self.output_names, feed, None)
        ran = time.perf_counter()
        took, rows = ran - began, sum(r.rows for r in batch)
        self.seconds.observe(took)
        self.rows.observe(rows)
        # at most doubled by one call: a call the OS preempted (a busy machine) does not send
        # a tiny model's next calls to a thread, whose hops cost more than the call
        self._seconds_per_row = min(took / rows, 2 * self._seconds_per_row)
        if len(batch) == 1:  # its outputs whole, not sliced
            results = [dict(zip(self.output_names, outputs, strict=True))]
        else:
            results = self._split(batch, outputs)
        done = time.perf_counter()
        self.counts.executed([r.waiting for r in batch], rows, joined, began, ran, done)
        return results

    def _split(self, batch: list[_Request], outputs: list[np.ndarray]) -> list[Arrays]:
        results, start = [], 0
        for request in batch:
            end = start + request.rows
            results.append(
                {n: out[start:end] for n, out in zip(self.output_names, outputs, strict=True)}
            )
            start = end
        return results


def _settle_waiter(waiter: asyncio.Future[bool], woken: bool) -> None:
    if not waiter.done():
        waiter.set_result(woken)


def _settle(request: _Request, result: Arrays | BaseException) -> None:
    assert request.future is not None  # a queued request's
    if request.future.done():
        return  # its job was canceled or timed out meanwhile
    if isinstance(result, BaseException):
        request.future.set_exception(result)
    else:
        request.future.set_result(result)
