"""The binary bodies ``POST /v1/jobs`` takes beside JSON, for bulk inputs that JSON would
multiply by ten:

- the V2 binary tensor form (``Inference-Header-Content-Length``: a JSON header naming each
  input's datatype, shape and ``binary_data_size``, then the raw bytes), as ``/v2`` reads it;
- ``application/x-npy``: one array, numpy's own format, for the model's input (``?input=``
  when it has several);
- ``application/x-npz``: one array per input, named as the inputs (``numpy.savez``, plain or
  compressed).

The model and the job's options come from the query (``?model=&version=&priority=&outputs=``,
priority on ``/v1``'s scale); a V2 header may name its ``outputs`` and ``parameters`` too. Sizes are checked against
the body limit as the body declares them, before anything is decoded: a compressed ``.npz``
cannot inflate past it. Object arrays are refused (they would need pickle).

An ``.npy`` body goes to Redis as it arrives, once its header is checked (hub/npybody.py): the
hub never holds it whole. The other forms, and an ``.npy`` with an Idempotency-Key (whose
fingerprint needs it whole), are read into one buffer (``read``) and viewed where they can be.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from starlette.requests import ClientDisconnect, Request

from contract.errors import InvalidInput, MalformedRequest, TooLarge
from hub import npybody
from hub.offload import OFF_LOOP_BYTES, decode_body
from hub.v2 import codec

NPY = "application/x-npy"
NPZ = "application/x-npz"


@dataclass
class BinaryJob:
    # an .npy's one array is named "" until the model names it; one still arriving (``incoming``)
    # is a placeholder of its shape and dtype
    arrays: dict[str, np.ndarray]
    outputs: list[str] | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    incoming: dict[str, AsyncIterator[memoryview]] = field(default_factory=dict)
    body: bytearray | None = None  # the whole body, when it was read whole


def is_binary(content_type: str | None, header_length: str | None) -> bool:
    return header_length is not None or _media(content_type) in (NPY, NPZ)


async def receive(request: Request, max_bytes: int, *, whole: bool = False) -> BinaryJob:
    """The arrays and options of a binary body; a 400 or 413 that says what is wrong. An
    ``.npy``'s data is left to come (``incoming``) unless ``whole`` is asked."""
    content_type = request.headers.get("content-type")
    header_length = request.headers.get(codec.HEADER_LENGTH)
    if header_length is None and _media(content_type) == NPY and not whole:
        return await _npy_as_it_comes(request, max_bytes)
    body = await read(request)
    heavy = len(body) > OFF_LOOP_BYTES
    job = await decode_body(heavy, _parse, content_type, header_length, body, max_bytes)
    job.body = body
    return job


async def whole(request: Request) -> bytes:
    """The body, as ``Request.body`` reads it (ClientDisconnect if the client leaves first),
    without its async generator: a hot route's body comes in one message, which is the body
    itself (3 µs less a request)."""
    chunks: list[bytes] = []
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        body: bytes = message.get("body", b"")
        if not message.get("more_body", False):
            return b"".join((*chunks, body)) if chunks else body
        chunks.append(body)


async def read(request: Request) -> bytearray:
    """The body in one buffer, sized by its ``Content-Length`` (which the body limit has
    checked) so that it is never grown by copying."""
    declared = request.headers.get("content-length", "")
    body = bytearray(int(declared) if declared.isdigit() else 0)
    filled = 0
    async for piece in request.stream():
        end = filled + len(piece)
        if end > len(body):
            body.extend(bytes(end - len(body)))
        body[filled:end] = piece
        filled = end
    del body[filled:]
    return body


def fingerprint(body: bytearray) -> str:
    """What makes two bodies the same request, for an Idempotency-Key."""
    return hashlib.sha256(body).hexdigest()[:32]


def name_inputs(
    job: BinaryJob, signature: dict[str, Any], model: str, input_name: str | None
) -> tuple[dict[str, np.ndarray], dict[str, AsyncIterator[memoryview]]]:
    """The arrays (and those still arriving) under the model's input names: an .npy's one
    array goes to ``input_name``, or to the model's only input."""
    if "" not in job.arrays:
        return job.arrays, job.incoming
    if input_name is None:
        if len(signature) != 1:
            raise InvalidInput(
                f"model '{model}' has {len(signature)} inputs ({', '.join(signature)}): "
                "name the one this .npy is with ?input=, or send an .npz of them all"
            )
        (input_name,) = signature
    incoming = {input_name: job.incoming[""]} if job.incoming else {}
    return {input_name: job.arrays[""]}, incoming


async def _npy_as_it_comes(request: Request, max_bytes: int) -> BinaryJob:
    where = "the body"
    pieces = request.stream().__aiter__()
    head = await npybody.take_header(pieces)
    header = npybody.read_header(head, where)
    if header.length + header.nbytes > max_bytes:  # sent without a Content-Length to say so
        raise TooLarge(
            f"the .npy declares {header.nbytes:,} bytes of data, over INFERHUB_MAX_BODY_BYTES "
            f"({max_bytes:,}); send fewer rows",
            "body_too_large",
        )
    first = head[header.length :]
    declared = request.headers.get("content-length", "")
    if declared.isdigit():  # a body of the wrong length is refused before anything is stored
        npybody.check_size(header, int(declared) - header.length, where, exact=True)
    if not header.streamable:  # Fortran order, big-endian: converted, so read whole first
        async for piece in pieces:
            head += piece
        return BinaryJob({"": npybody.view(head, where)}, body=head)
    return BinaryJob(
        {"": header.placeholder()}, incoming={"": npybody.data(header, first, pieces, where)}
    )


def _parse(
    content_type: str | None, header_length: str | None, body: bytearray, max_bytes: int
) -> BinaryJob:
    if header_length is not None:
        parsed = codec.parse_request(bytes(body), header_length)
        outputs = [o.name for o in parsed.outputs] if parsed.outputs else None
        return BinaryJob(parsed.arrays, outputs, parsed.parameters)
    if _media(content_type) == NPY:
        return BinaryJob({"": npybody.view(body, "the body")})
    return BinaryJob(_npz(body, max_bytes))


def _media(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def _npz(body: bytearray, max_bytes: int) -> dict[str, np.ndarray]:
    try:
        archive = zipfile.ZipFile(_Reader(body))
    except zipfile.BadZipFile as exc:
        raise MalformedRequest(f"the body is not an .npz archive: {exc}", "malformed_npz") from None
    with archive:
        members = archive.infolist()
        declared = sum(m.file_size for m in members)
        if declared > max_bytes:
            raise TooLarge(
                f"the .npz holds {declared:,} bytes once inflated, over INFERHUB_MAX_BODY_BYTES "
                f"({max_bytes:,})",
                "body_too_large",
            )
        arrays: dict[str, np.ndarray] = {}
        for member in members:
            if not member.filename.endswith(".npy"):
                raise MalformedRequest(
                    f"the .npz member {member.filename!r} is not an .npy array", "malformed_npz"
                )
            try:
                with archive.open(member) as stream:
                    data = stream.read(member.file_size + 1)  # one more: a longer one is refused
                arrays[member.filename.removesuffix(".npy")] = npybody.view(
                    data, f"the .npz member {member.filename!r}"
                )
            except (zipfile.BadZipFile, OSError) as exc:  # a bad CRC, a cut archive
                raise MalformedRequest(
                    f"the .npz archive is damaged: {exc}", "malformed_npz"
                ) from None
    if not arrays:
        raise MalformedRequest("the .npz archive holds no array", "malformed_npz")
    return arrays


class _Reader(io.RawIOBase):
    """A seekable reader of a buffer, without the copy of it that ``io.BytesIO`` makes."""

    def __init__(self, data: bytearray) -> None:
        self._data = memoryview(data)
        self._at = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._at

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = (0, self._at, len(self._data))[whence]
        self._at = max(0, base + offset)
        return self._at

    def readinto(self, buffer: Any) -> int:
        piece = self._data[self._at : self._at + len(buffer)]
        buffer[: len(piece)] = piece
        self._at += len(piece)
        return len(piece)
