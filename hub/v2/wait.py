"""An inference awaited for its answer, and canceled when its client leaves.

A V2 request is request/response: when the client disconnects, nobody will read the answer,
so the request is canceled; one that has not left the hub in a batch yet then never runs.
"""

from __future__ import annotations

import asyncio

from fastapi import Request


class canceled_if_the_client_leaves:
    """Run the block, canceled if the client disconnects first: ``left`` then says so, and
    the cancellation ends here. One watcher task per request, no second task for the work
    (a class, not ``contextlib.asynccontextmanager``: its generator costs more per request)."""

    __slots__ = ("_request", "_task", "_watcher", "left")

    def __init__(self, request: Request) -> None:
        self.left = False
        self._request = request

    async def __aenter__(self) -> canceled_if_the_client_leaves:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._watcher = asyncio.create_task(self._watch())
        return self

    async def _watch(self) -> None:
        await disconnected(self._request)
        self.left = True
        self._task.cancel()

    async def __aexit__(self, kind: type[BaseException] | None, *_: object) -> bool:
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
