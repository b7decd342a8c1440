"""Large inputs stored apart from the arq job, as raw bytes, so that none is copied to be packed.

A job's inputs travel packed in its arq job (contract/tensors.py). A tensor of at least
``APART_BYTES`` (not BYTES) travels as a reference instead, ``{"name", "datatype", "shape",
"apart": [offset, nbytes]}``, into ``keys.job_inputs``: the raw little-endian bytes of every
such tensor, one after the other, with the job's TTL. The hub writes them straight from the
request's own buffer (an ``.npy`` body is viewed, never decoded), and the worker reads them in
one ``GET`` and views each tensor in place with numpy. Before, a bulk body was copied four
times in the hub (decoded, packed, msgpack'd into the arq job, sent) and twice in the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from typing import Any

import numpy as np
from redis.asyncio import Redis
from redis.exceptions import RedisError

from contract import keys
from contract.tensors import DTYPES, datatype_of, pack_tensor

APART_BYTES = 1 << 20
# bytes per write: Python 3.11's asyncio transport joins and copies what it is handed (the
# remainder a send leaves, too), so a slice is what the hub holds beside the body while sending
SLICE_BYTES = 4 << 20


class InputsExpired(LookupError):
    """A job's inputs stored apart are gone (past its TTL): it cannot run."""


# the bytes of an input stored apart: in memory, or still arriving (in slices)
Source = memoryview | AsyncIterable[memoryview]


def pack(
    arrays: Mapping[str, np.ndarray], incoming: Mapping[str, AsyncIterable[memoryview]]
) -> tuple[list[dict[str, Any]], list[Source]]:
    """The job's packed inputs, the large ones as references, and the bytes those refer to:
    views of the arrays' own memory (when contiguous and little-endian, as a body's is), or
    for an input in ``incoming`` (whose array is a placeholder) its bytes as they arrive."""
    packed: list[dict[str, Any]] = []
    apart: list[Source] = []
    offset = 0
    for name, array in arrays.items():
        datatype = datatype_of(array)
        source: Source | None = incoming.get(name)
        if source is None and (datatype == "BYTES" or array.nbytes < APART_BYTES):
            packed.append(pack_tensor(name, array))
            continue
        if source is None:
            source = np.ascontiguousarray(array, dtype=DTYPES[datatype]).data.cast("B")
        packed.append(
            {
                "name": name,
                "datatype": datatype,
                "shape": list(array.shape),
                "apart": [offset, array.nbytes],
            }
        )
        apart.append(source)
        offset += array.nbytes
    return packed, apart


async def store(redis: Redis, job_id: str, apart: Sequence[Source], ttl_s: int) -> int:
    """Write the bytes ``pack`` set apart under the job's inputs key, in slices; their size.
    A source still arriving may raise (a body cut short): the caller removes the key."""
    key, written = keys.job_inputs(job_id), 0
    for source in apart:
        async for piece in _slices(source):
            if written:
                await redis.append(key, piece)
            else:
                await redis.set(key, piece, ex=ttl_s)
            written += piece.nbytes
    return written


async def remove(redis: Redis, job_id: str) -> None:
    """Remove what ``store`` wrote for a job that was not created; Redis being away leaves it
    to the TTL."""
    with contextlib.suppress(RedisError):
        await redis.delete(keys.job_inputs(job_id))


async def _slices(source: Source) -> AsyncIterator[memoryview]:
    if isinstance(source, memoryview):
        for start in range(0, source.nbytes, SLICE_BYTES):
            yield source[start : start + SLICE_BYTES]
        return
    # the next slice is read (from the request) while this one is written
    pieces = aiter(source)
    ahead: asyncio.Future[memoryview] = asyncio.ensure_future(anext(pieces))
    try:
        while True:
            try:
                piece = await ahead
            except StopAsyncIteration:
                return
            ahead = asyncio.ensure_future(anext(pieces))
            yield piece
    finally:
        if not ahead.cancel() and not ahead.cancelled():
            ahead.exception()  # already ended (a body cut short): seen, the store's error stands


def has_apart(packed: Sequence[Mapping[str, Any]]) -> bool:
    return any("apart" in p for p in packed)


async def resolve(
    redis: Redis, job_id: str, packed: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The packed inputs, each reference given its bytes: views of the one buffer read."""
    if not has_apart(packed):
        return list(packed)
    blob = await redis.get(keys.job_inputs(job_id))
    if blob is None:
        raise InputsExpired(f"the inputs of job '{job_id}' have expired")
    view = memoryview(blob)
    return [
        {**p, "raw": view[p["apart"][0] : p["apart"][0] + p["apart"][1]]} if "apart" in p else p
        for p in packed
    ]
