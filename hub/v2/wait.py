"""An inference awaited for its answer, and canceled when its client leaves.

A V2 request is request/response: when the client disconnects, nobody will read the answer,
so the request is canceled; one that has not left the hub in a batch yet then never runs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Request


@dataclass
class Client:
    left: bool = False


@contextlib.asynccontextmanager
async def canceled_if_the_client_leaves(request: Request) -> AsyncIterator[Client]:
    """Run the block, canceled if the client disconnects first: ``left`` then says so, and
    the cancellation ends here. One watcher task per request, no second task for the work."""
    client, task = Client(), asyncio.current_task()
    assert task is not None

    async def watch() -> None:
        await disconnected(request)
        client.left = True
        task.cancel()

    watcher = asyncio.create_task(watch())
    try:
        yield client
    except asyncio.CancelledError:
        if not client.left:
            raise
        task.uncancel()
    finally:
        watcher.cancel()


async def disconnected(request: Request) -> None:
    """Return when the HTTP client disconnects; the request's body must have been read, so that
    the next message the server receives is the disconnect."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
