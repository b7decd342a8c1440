"""What this worker ran, per model version, for Triton's statistics (``contract/stats.py``).

A request (an online request, or a job) is timed by ``counted``: it puts a ``Timing`` in a
context variable, which the batcher reads when the request's rows join a batch (``Waiting``),
and to which each execution adds its share (``Counts.executed``: the wait in the batcher is
``queue``; the concatenation, the onnxruntime call and the slicing are ``compute_input``,
``compute_infer``, ``compute_output``). The counts are deltas held here until the next round trip
the worker sends anyway carries them to Redis (``Tally.add_to``): the online reply, the
heartbeat; a failed send puts them back.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError

from contract import channels, keys, scripts
from contract import stats as contract
from workers.commands import Commands, round_trip

T = TypeVar("T")

_NS = 1_000_000_000

STATS_ADD = scripts.load("stats_add")

REPLY_SEND_S = 1.0
"""The counts ride on an online reply at most this often; the heartbeat carries the rest."""


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
        fields = _batch_fields(rows)
        with self.lock:
            self.pending[contract.EXECUTION_COUNT] += 1
            self.pending[contract.INFERENCE_COUNT] += rows
            for name, ns in parts.items():
                count, total = fields[name]
                self.pending[count] += 1
                self.pending[total] += ns
        for rows_of in waiting:
            if rows_of.timing is not None:
                rows_of.timing.queue += int(max(0.0, began - rows_of.since) * _NS)
                for name, ns in parts.items():
                    setattr(rows_of.timing, name, getattr(rows_of.timing, name) + ns)

    def answered(self, timing: Timing, ok: bool, requests: int = 1) -> None:
        """Requests ended, well or not, each with the durations of ``timing`` (several when
        their rows ran joined, as one): they join the counts, in one step however many."""
        took = time.perf_counter_ns() - timing.began_ns
        with self.lock:
            self._add("success" if ok else "fail", took, requests)
            if ok:  # as Triton: the other durations are those of successful requests
                for name in contract.DURATIONS[2:]:
                    self._add(name, getattr(timing, name), requests)
            self.last_ms = int(time.time() * 1000)

    def _add(self, name: str, ns: int, requests: int) -> None:
        count, total = _FIELDS[name]
        self.pending[count] += requests
        self.pending[total] += ns * requests


# each duration's two hash fields, made once: answered() runs once per request or batch
_FIELDS = {n: (contract.field(n, "count"), contract.field(n, "ns")) for n in contract.DURATIONS}


@functools.cache  # a few batch sizes (at most max_batch_size), one lookup per execution
def _batch_fields(rows: int) -> dict[str, tuple[str, str]]:
    return {
        n: (contract.batch_field(rows, n, "count"), contract.batch_field(rows, n, "ns"))
        for n in contract.BATCH_DURATIONS
    }


class Tally:
    """This worker's counts, per model version."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], Counts] = {}
        self._sent_at = -math.inf  # time.monotonic() of the last send

    def due(self) -> bool:
        """Whether an online reply should carry the counts: at most every ``REPLY_SEND_S``,
        so that a busy worker adds a script call a second (each a HINCRBY per field), not one
        per batch."""
        return time.monotonic() - self._sent_at >= REPLY_SEND_S

    @staticmethod
    async def prepare(redis: Any) -> None:
        """Load the script in Redis, so that the first counts sent are not put back."""
        await STATS_ADD.ensure(redis)

    def of(self, model: str, version: str) -> Counts:
        return self._counts.setdefault((model, version), Counts())

    def add_to(self, pipe: Commands) -> Sent:
        """Queue the pending counts on ``pipe``, one script call per model version (and
        forget them); ``Sent`` puts back those that did not reach Redis."""
        sent = Sent()
        self._sent_at = time.monotonic()
        for (model, version), counts in list(self._counts.items()):
            with counts.lock:
                pending, last_ms = counts.pending, counts.last_ms
                counts.pending, counts.last_ms = Counter(), 0
            if not pending:
                continue
            deltas = [x for field_delta in pending.items() for x in field_delta]
            sent.calls.append((len(pipe), counts, pending, last_ms))
            STATS_ADD.queue(
                cast(Pipeline, pipe),  # it queues the call with execute_command only
                keys={"stats": keys.model_stats(model, version)},
                args={"last_inference": last_ms, "deltas": deltas},
            )
        return sent

    async def send(
        self, redis: Any, fill: Callable[[Commands], object], *, counts: bool = True
    ) -> list[Any]:
        """One round trip (``round_trip``): the pending counts (when ``counts``) and then what
        ``fill`` queues; counts that did not reach Redis are put back. Every command's result,
        errors included."""
        commands = Commands()
        sent = self.add_to(commands) if counts else Sent()
        fill(commands)
        try:
            results = await round_trip(redis, commands)
        except BaseException:
            sent.undo()
            raise
        if sent.calls:
            await sent.settle(redis, results)
        return results


class Sent:
    """The counts queued on one round trip, by their position in it."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, Counts, Counter[str], int]] = []

    def undo(self, only: Sequence[int] | None = None) -> None:
        """Put the counts back (those at the positions ``only``, else all), to send later."""
        for position, counts, pending, last_ms in self.calls:
            if only is None or position in only:
                with counts.lock:
                    counts.pending.update(pending)
                    counts.last_ms = max(counts.last_ms, last_ms)

    async def settle(self, redis: Any, results: Sequence[Any]) -> None:
        """After the round trip (errors as results): put back what failed; a Redis that lost its
        scripts (restarted) gets this one again, for the next send."""
        failed = [p for p, *_ in self.calls if isinstance(results[p], Exception)]
        self.undo(failed)
        if any(isinstance(results[p], NoScriptError) for p in failed):
            await STATS_ADD.ensure(redis)


class Timed:
    """Time what runs inside (in this task) as one request: the executions of its rows add to
    the ``Timing``, which the caller gives ``Counts.answered`` (once per request, when several
    requests' rows ran joined as one). A class, not a generator's context manager: cheaper
    on a worker woken from sleep with cold caches (``workers.batcher._Expecting``)."""

    __slots__ = ("timing", "token")

    def __enter__(self) -> Timing:
        self.timing = Timing()
        self.token = _current.set(self.timing)
        return self.timing

    def __exit__(self, *exc: object) -> None:
        _current.reset(self.token)


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


async def publish_counted(
    redis: Any,
    tally: Tally,
    channel: str,
    message: bytes,
    then: Callable[[Commands], object] | None = None,
) -> None:
    """Publish ``message`` with the pending counts when they are due, and what ``then`` queues
    after it, in one round trip (counts first: whoever reads the answer of a quiet worker finds
    them in Redis); the first of the publication's and ``then``'s errors is raised."""
    start = 0
    command = await channels.publish_command(redis)

    def fill(pipe: Commands) -> None:
        nonlocal start
        start = len(pipe)
        pipe.execute_command(command, channel, message)
        if then is not None:
            then(pipe)

    results = await tally.send(redis, fill, counts=tally.due())
    for result in results[start:]:
        if isinstance(result, Exception):
            raise result
