"""Decoding large request bodies in a thread, off the event loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, TypeVar

from starlette.concurrency import run_in_threadpool

# Above this, decoding a body takes long enough (tens of ms for JSON) to stall every other
# connection of the process: it runs in a thread, and the event loop keeps answering.
OFF_LOOP_BYTES = 1024 * 1024

P = ParamSpec("P")
R = TypeVar("R")


async def decode_body(heavy: bool, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """``fn(*args, **kwargs)``, in a thread when ``heavy`` (a body over ``OFF_LOOP_BYTES``)."""
    if heavy:
        return await run_in_threadpool(fn, *args, **kwargs)
    return fn(*args, **kwargs)
