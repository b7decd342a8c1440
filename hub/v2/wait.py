"""An inference's job awaited for its answer, and canceled when nobody will read it.

A V2 request is request/response: when the client leaves or the request's deadline passes,
the job is canceled, so that a queued job never takes a worker's time for an answer that
nobody reads.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

from fastapi import Request

from contract.errors import InferhubError, Unavailable
from hub.service import JobService, PendingJob


async def answer_or_cancel(
    service: JobService,
    job: PendingJob,
    deadline_s: float,
    gone: Coroutine[Any, Any, None],
) -> bool:
    """Wait for the job to end; False if ``gone`` (the client left) ended first.

    Raises ``Unavailable`` (``timeout``) when the deadline passed first.
    """
    ended = asyncio.create_task(job.finish(deadline_s))
    left = asyncio.create_task(gone)
    try:
        await asyncio.wait({ended, left}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (ended, left):
            task.cancel()
        await asyncio.gather(ended, left, return_exceptions=True)
    if job.finished:
        return True
    job_id = job.record["id"]
    with contextlib.suppress(InferhubError):  # it may have finished meanwhile: nothing to cancel
        await service.cancel(job_id, owner=job.record["owner"])
    if left.done() and not left.cancelled():
        return False
    raise Unavailable(
        f"request timeout expired: job '{job_id}' did not finish within {deadline_s:g} s "
        "and was canceled",
        "timeout",
    )


async def disconnected(request: Request) -> None:
    """Return when the HTTP client disconnects; the request's body must have been read, so that
    the next message the server receives is the disconnect."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
