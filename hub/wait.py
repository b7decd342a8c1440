"""An inference awaited for its answer, and canceled when its client leaves.

An online request (``/v2 infer``, ``/v1/jobs`` with ``"lane": "online"``) is request/response:
when the client disconnects, nobody will read the answer, so the request is canceled; one that
has not left the hub in a batch yet then never runs.
"""

from __future__ import annotations

import asyncio

from fastapi import Request

WATCH_AFTER_S = 0.05
"""How long a request waits before its client is watched. Most are answered sooner (at C=64
on the digits model the median is 11-18 ms): a watcher task for each (created, run until it
waits, canceled) cost ~4% of the hub's CPU there; a timer costs a tenth of that. A client
that leaves sooner is noticed this late."""


class canceled_if_the_client_leaves:
    """Run the block, canceled if the client disconnects first: ``left`` then says so, and
    the cancellation ends here. A watcher task once the request has waited ``WATCH_AFTER_S``,
    no second task for the work (a class, not ``contextlib.asynccontextmanager``: its
    generator costs more per request)."""

    __slots__ = ("_request", "_task", "_timer", "_watcher", "left")

    def __init__(self, request: Request) -> None:
        self.left = False
        self._request = request
        self._watcher: asyncio.Task[None] | None = None

    async def __aenter__(self) -> canceled_if_the_client_leaves:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._timer = asyncio.get_running_loop().call_later(WATCH_AFTER_S, self._start)
        return self

    def _start(self) -> None:
        self._watcher = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        await disconnected(self._request)
        self.left = True
        self._task.cancel()

    async def __aexit__(self, kind: type[BaseException] | None, *_: object) -> bool:
        self._timer.cancel()
        if self._watcher is not None:
            self._watcher.cancel()
        if kind is asyncio.CancelledError and self.left:
            self._task.uncancel()
            return True  # the client left: the cancellation ends here
        return False


async def disconnected(request: Request) -> None:
    """Return when the HTTP client disconnects; the request's body must have been read, so that
    the next message the server receives is the disconnect."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
