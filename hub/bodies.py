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

The body is read into one buffer (``read``), and an ``.npy``'s array is a view of it once its
header is checked: the hub holds one copy of a bulk body, which goes to
Redis as it is (contract/inputs.py).
"""

from __future__ import annotations

import hashlib
import io
import math
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from starlette.requests import Request

from contract.errors import InvalidInput, MalformedRequest, TooLarge
from hub.v2 import codec

HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}

# an .npy header is at most this long here (numpy writes ~128 bytes; its reader's bound is 10 KB)
HEADER_PEEK = 64 * 1024

NPY = "application/x-npy"
NPZ = "application/x-npz"


@dataclass
class BinaryJob:
    arrays: dict[str, np.ndarray]  # an .npy's one array is named "" until the model names it
    outputs: list[str] | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


def is_binary(content_type: str | None, header_length: str | None) -> bool:
    return header_length is not None or _media(content_type) in (NPY, NPZ)


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


def parse(
    content_type: str | None, header_length: str | None, body: bytearray, max_bytes: int
) -> BinaryJob:
    """The arrays and options of a binary body; a 400 or 413 that says what is wrong."""
    if header_length is not None:
        parsed = codec.parse_request(bytes(body), header_length)
        outputs = [o.name for o in parsed.outputs] if parsed.outputs else None
        return BinaryJob(parsed.arrays, outputs, parsed.parameters)
    if _media(content_type) == NPY:
        return BinaryJob({"": _npy_view(body)})
    return BinaryJob(_npz(body, max_bytes))


def name_inputs(
    job: BinaryJob, signature: dict[str, Any], model: str, input_name: str | None
) -> dict[str, np.ndarray]:
    """The arrays under the model's input names: an .npy's one array goes to ``input_name``,
    or to the model's only input."""
    if "" not in job.arrays:
        return job.arrays
    if input_name is None:
        if len(signature) != 1:
            raise InvalidInput(
                f"model '{model}' has {len(signature)} inputs ({', '.join(signature)}): "
                "name the one this .npy is with ?input=, or send an .npz of them all"
            )
        (input_name,) = signature
    return {input_name: job.arrays[""]}


def _media(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def _npy_view(body: bytearray) -> np.ndarray:
    """The .npy body's array, a view of the body itself once its header is checked."""
    stream = io.BytesIO(bytes(memoryview(body)[:HEADER_PEEK]))
    shape, fortran, dtype = _header(stream, "the body")
    start = stream.tell()
    if _check_size(shape, dtype, len(body) - start, "the body") < len(body) - start:
        raise MalformedRequest("the body holds bytes past its array", "malformed_npy")
    array = np.frombuffer(body, dtype=dtype, offset=start, count=math.prod(shape))
    return _shaped(array, shape, fortran)


def _npy(stream: Any, available: int, where: str) -> np.ndarray:
    shape, fortran, dtype = _header(stream, where)
    size = _check_size(shape, dtype, available, where)
    data = stream.read(size)
    if len(data) != size:
        raise _short(shape, dtype, size, where)
    if stream.read(1):
        raise MalformedRequest(f"{where} holds bytes past its array", "malformed_npy")
    return _shaped(np.frombuffer(data, dtype=dtype), shape, fortran)


def _header(stream: Any, where: str) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
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
    return shape, fortran, dtype


def _check_size(shape: tuple[int, ...], dtype: np.dtype[Any], available: int, where: str) -> int:
    """The array's size in bytes, which ``available`` bytes must hold."""
    size = math.prod(shape) * dtype.itemsize
    if size > available:
        raise _short(shape, dtype, size, where)
    return size


def _short(shape: tuple[int, ...], dtype: np.dtype[Any], size: int, where: str) -> MalformedRequest:
    return MalformedRequest(
        f"{where} declares {shape} {dtype} ({size:,} bytes) but holds fewer", "malformed_npy"
    )


def _shaped(flat: np.ndarray, shape: tuple[int, ...], fortran: bool) -> np.ndarray:
    array = flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)
    return array.astype(array.dtype.newbyteorder("<"), copy=False)


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
                    arrays[member.filename.removesuffix(".npy")] = _npy(
                        stream, member.file_size, f"the .npz member {member.filename!r}"
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
