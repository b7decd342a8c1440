"""Gather concurrent calls of one kind into one round trip, without making a lone one wait.

A line per key: when no call of its line is in flight, a call goes at the end of the event
loop's turn, with the calls of its line made in that same turn; while one is in flight,
arriving calls gather, and leave together (up to ``most`` of them) as soon as it returns. So a
lone caller pays one turn of the loop, and a busy process sends fewer, larger calls: the more
round trips overlap, the larger the batches. The hub's online lane dispatches its batches the
same way (``hub/online.py``, with a capacity and a delay of its own).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

Send = Callable[[Hashable, Sequence[Item]], Awaitable[Sequence[Result]]]
"""Sends the items of one key in one call; returns a result per item, in order."""


@dataclass(eq=False)
class _Line(Generic[Item, Result]):
    waiting: list[tuple[Item, asyncio.Future[Result]]] = field(default_factory=list)


class Gatherer(Generic[Item, Result]):
    def __init__(self, send: Send[Item, Result], *, most: int) -> None:
        self._send = send
        self.most = most
        self._lines: dict[Hashable, _Line[Item, Result]] = {}  # those with a call in flight
        self._tasks: set[asyncio.Task[None]] = set()
        self.calls = 0  # calls sent, for the tests and benchmarks

    async def __call__(self, key: Hashable, item: Item) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        entry = (item, future)
        line = self._lines.get(key)
        if line is not None:  # a call is in flight, or about to be: go with the next one
            line.waiting.append(entry)
            try:
                return await future
            finally:
                if entry in line.waiting:  # the caller left (canceled) before it was sent
                    line.waiting.remove(entry)
        line = self._lines[key] = _Line([entry])
        try:
            # to the end of this turn of the loop: the calls made in it (the jobs a batch
            # ended, the requests read together) go with this one, in one call, not two
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            line.waiting.remove(entry)
            self._next(key)
            raise
        taken, line.waiting = line.waiting[: self.most], line.waiting[self.most :]
        if len(taken) > 1:  # sent by a task of their own: no caller's cancellation cuts it
            self._start(key, taken)
            return await future
        try:  # alone: from the caller's task, as if there were no gathering
            self.calls += 1
            (result,) = await self._send(key, (item,))
        finally:
            self._next(key)
        return result

    def _next(self, key: Hashable) -> None:
        """The line's call returned: send what gathered meanwhile, or close the line."""
        line = self._lines[key]
        if not line.waiting:
            del self._lines[key]
            return
        taken, line.waiting = line.waiting[: self.most], line.waiting[self.most :]
        self._start(key, taken)

    def _start(self, key: Hashable, taken: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        task = asyncio.create_task(self._send_gathered(key, taken))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_gathered(
        self, key: Hashable, taken: list[tuple[Item, asyncio.Future[Result]]]
    ) -> None:
        try:
            self.calls += 1
            results = await self._send(key, [item for item, _ in taken])
        except asyncio.CancelledError:  # closing
            for _, future in taken:
                future.cancel()
            raise
        except Exception as exc:  # every caller of the call gets its failure
            for _, future in taken:
                if not future.done():
                    future.set_exception(exc)
        else:
            for (_, future), result in zip(taken, results, strict=True):
                if not future.done():
                    future.set_result(result)
        finally:
            self._next(key)
