"""What this worker ran, per model version, for Triton's statistics (``contract/stats.py``).

A request (an online request, or a job) is timed by ``counted``: it puts a ``Timing`` in a
context variable, which the batcher reads when the request's rows join a batch (``Waiting``),
and to which each execution adds its share (``Counts.executed``: the wait in the batcher is
``queue``; the concatenation, the onnxruntime call and the slicing are ``compute_input``,
``compute_infer``, ``compute_output``). The counts are deltas held here until the next pipeline
the worker sends anyway carries them to Redis (``Tally.add_to``): the online reply, the
heartbeat; a failed send puts them back.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, TypeVar

from redis.asyncio.client import Pipeline

from contract import keys
from contract import stats as contract

T = TypeVar("T")

_NS = 1_000_000_000


@dataclass
class Timing:
    """One request's nanoseconds on this worker, summed over its chunks."""

    began_ns: int = field(default_factory=time.perf_counter_ns)
    queue: int = 0
    compute_input: int = 0
    compute_infer: int = 0
    compute_output: int = 0


_current: ContextVar[Timing | None] = ContextVar("inferhub_request_timing", default=None)


@dataclass
class Waiting:
    """Rows handed to a batcher: the request they belong to (if counted) and since when."""

    timing: Timing | None = field(default_factory=_current.get)
    since: float = field(default_factory=time.perf_counter)


class Counts:
    """One model version's counts not yet in Redis. The batcher counts from the thread that
    runs onnxruntime, the event loop takes them: a lock keeps the two apart."""

    def __init__(self) -> None:
        self.pending: Counter[str] = Counter()
        self.last_ms = 0
        self.lock = threading.Lock()

    def executed(
        self,
        waiting: Sequence[Waiting],
        rows: int,
        began: float,
        fed: float,
        ran: float,
        done: float,
    ) -> None:
        """One onnxruntime call over ``rows`` rows of the requests ``waiting``: concatenated
        from ``began`` to ``fed``, run until ``ran``, sliced until ``done`` (perf_counter)."""
        parts = {
            "compute_input": int((fed - began) * _NS),
            "compute_infer": int((ran - fed) * _NS),
            "compute_output": int((done - ran) * _NS),
        }
        with self.lock:
            self.pending[contract.EXECUTION_COUNT] += 1
            self.pending[contract.INFERENCE_COUNT] += rows
            for name, ns in parts.items():
                self.pending[contract.batch_field(rows, name, "count")] += 1
                self.pending[contract.batch_field(rows, name, "ns")] += ns
        for rows_of in waiting:
            if rows_of.timing is not None:
                rows_of.timing.queue += int(max(0.0, began - rows_of.since) * _NS)
                for name, ns in parts.items():
                    setattr(rows_of.timing, name, getattr(rows_of.timing, name) + ns)

    def answered(self, timing: Timing, ok: bool) -> None:
        """A request ended, well or not: its durations join the counts."""
        with self.lock:
            self._add("success" if ok else "fail", time.perf_counter_ns() - timing.began_ns)
            if ok:  # as Triton: the other durations are those of successful requests
                for name in contract.DURATIONS[2:]:
                    self._add(name, getattr(timing, name))
            self.last_ms = int(time.time() * 1000)

    def _add(self, name: str, ns: int) -> None:
        self.pending[contract.field(name, "count")] += 1
        self.pending[contract.field(name, "ns")] += ns


class Tally:
    """This worker's counts, per model version."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], Counts] = {}

    def of(self, model: str, version: str) -> Counts:
        return self._counts.setdefault((model, version), Counts())

    def add_to(self, pipe: Pipeline) -> Callable[[], None]:
        """Queue the pending counts on ``pipe`` (and forget them); returns what puts them back
        if the pipeline fails."""
        taken: list[tuple[Counts, Counter[str], int]] = []
        for (model, version), counts in list(self._counts.items()):
            with counts.lock:
                pending, last_ms = counts.pending, counts.last_ms
                counts.pending, counts.last_ms = Counter(), 0
            if not pending:
                continue
            key = keys.model_stats(model, version)
            for name, delta in pending.items():
                pipe.hincrby(key, name, delta)
            if last_ms:
                pipe.hset(key, contract.LAST_INFERENCE, str(last_ms))
            taken.append((counts, pending, last_ms))

        def undo() -> None:
            for counts, pending, last_ms in taken:
                with counts.lock:
                    counts.pending.update(pending)
                    counts.last_ms = max(counts.last_ms, last_ms)

        return undo


async def counted(counts: Counts, request: Awaitable[T], ok: Callable[[T], bool | None]) -> T:
    """Await ``request`` timed as one request of ``counts``'s model version: a success or a
    failure as ``ok`` says of its result (None: neither, e.g. canceled), a failure if it
    raises. Run it as a task of its own (``gather`` does), so that its timing is its own."""
    timing = Timing()
    _current.set(timing)
    try:
        result = await request
    except Exception:
        counts.answered(timing, False)
        raise
    verdict = ok(result)
    if verdict is not None:
        counts.answered(timing, verdict)
    return result


async def publish_counted(redis: Any, tally: Tally, channel: str, message: bytes) -> None:
    """Publish ``message`` with the pending counts, in one round trip (counts first, so that
    whoever reads the answer finds them in Redis)."""
    async with redis.pipeline(transaction=False) as pipe:
        undo = tally.add_to(pipe)
        pipe.publish(channel, message)
        try:
            await pipe.execute()
        except BaseException:
            undo()
            raise
