"""An ``.npy`` body taken as it arrives: its header read and checked first, then its array's
bytes handed on in slices as they come, to be written to Redis (contract/inputs.py) without
the hub ever holding the whole body. The model and shape are checked against the header before
a byte of data is stored; a body that turns out short or long is refused when that shows (at
once, when ``Content-Length`` says so), and what was stored of it is removed (hub/service.py).
"""

from __future__ import annotations

import io
import math
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from contract.errors import InvalidInput, MalformedRequest
from contract.inputs import SLICE_BYTES

HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}
# an .npy header is at most this long here (numpy writes ~128 bytes; its reader's bound is 10 KB)
HEADER_MOST = 64 * 1024


@dataclass
class Header:
    shape: tuple[int, ...]
    fortran: bool
    dtype: np.dtype[Any]
    length: int  # of the magic, version and header: where the array's bytes begin

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def streamable(self) -> bool:
        """Whether the bytes are already what Redis keeps (C order, little-endian)."""
        return not self.fortran and self.dtype.newbyteorder("<") == self.dtype

    def placeholder(self) -> np.ndarray:
        """An array of the body's shape and dtype that holds no memory, for the checks."""
        return np.broadcast_to(np.zeros((), self.dtype.newbyteorder("<")), self.shape)


def header_end(head: bytes | bytearray) -> int | None:
    """Where the header of an .npy starting with ``head`` ends, once ``head`` says it."""
    if len(head) < 10:
        return None
    if head[6] == 1:
        return 10 + int(struct.unpack_from("<H", head, 8)[0])
    if len(head) < 12:
        return None
    return 12 + int(struct.unpack_from("<I", head, 8)[0])


def read_header(head: bytes | bytearray, where: str) -> Header:
    """The header at the start of ``head``; a 400 or 422 that says what is wrong."""
    stream = io.BytesIO(bytes(head[:HEADER_MOST]))
    try:
        version = np.lib.format.read_magic(stream)
        if version not in HEADER_READERS:
            raise ValueError(f"format version {version} is not 1.0 or 2.0")
        shape, fortran, dtype = HEADER_READERS[version](stream)
    except ValueError as exc:
        raise MalformedRequest(f"{where} is not an .npy array: {exc}", "malformed_npy") from None
    if dtype.hasobject:
        raise InvalidInput(
            f"{where} holds Python objects, which .npy stores pickled: send BYTES in JSON or "
            "the V2 binary form",
            "malformed_npy",
        )
    return Header(shape, fortran, dtype, stream.tell())


def check_size(header: Header, available: int, where: str, exact: bool) -> None:
    """That ``available`` bytes (after the header) hold the array: exactly, or at least."""
    if available < header.nbytes:
        raise MalformedRequest(
            f"{where} declares {header.shape} {header.dtype} ({header.nbytes:,} bytes) but "
            "holds fewer",
            "malformed_npy",
        )
    if exact and available > header.nbytes:
        raise MalformedRequest(f"{where} holds bytes past its array", "malformed_npy")


def view(body: bytearray | bytes, where: str) -> np.ndarray:
    """The array of a whole .npy, a view of ``body`` itself when it is C order little-endian."""
    header = read_header(body, where)
    check_size(header, len(body) - header.length, where, exact=True)
    flat = np.frombuffer(
        body, dtype=header.dtype, offset=header.length, count=math.prod(header.shape)
    )
    array = flat.reshape(header.shape[::-1]).T if header.fortran else flat.reshape(header.shape)
    return array.astype(header.dtype.newbyteorder("<"), copy=False)


async def take_header(pieces: AsyncIterator[bytes]) -> bytearray:
    """The body's first bytes, up to the end of its header at least (or all of a short body)."""
    head = bytearray()
    async for piece in pieces:
        head += piece
        end = header_end(head)
        if len(head) >= HEADER_MOST or (end is not None and len(head) >= end):
            break
    return head


async def data(
    header: Header, first: bytearray, pieces: AsyncIterator[bytes], where: str
) -> AsyncIterator[memoryview]:
    """The array's bytes in slices of about ``SLICE_BYTES``: ``first`` (what came with the
    header), then the rest of the body, refused as soon as it is longer than the array, or at
    its end when it is shorter."""
    size, got, gathered = header.nbytes, len(first), first
    if got > size:
        raise MalformedRequest(f"{where} holds bytes past its array", "malformed_npy")
    async for piece in pieces:
        got += len(piece)
        if got > size:
            raise MalformedRequest(f"{where} holds bytes past its array", "malformed_npy")
        gathered += piece
        if len(gathered) >= SLICE_BYTES:
            yield memoryview(gathered)
            gathered = bytearray()
    check_size(header, got, where, exact=True)
    if gathered:
        yield memoryview(gathered)
