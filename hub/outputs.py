"""A job's stored outputs in the format a client asks for, streamed.

``GET /v1/jobs/{id}/outputs`` picks the format from ``?format=`` or the ``Accept`` header:

- ``json`` (``application/json``): the V2 response form, ``{"id", "model_name",
  "model_version", "outputs": [V2 JSON tensors]}``;
- ``binary`` (``application/octet-stream``): Triton's binary tensor form, the JSON header
  (length in ``Inference-Header-Content-Length``) then each output's raw bytes, as ``/v2``
  answers, so that ``tritonclient``'s ``InferResult.from_response_body`` reads it;
- ``npy`` (``application/x-npy``): one output (``?output=``, or the only one), numpy's format;
- ``npz`` (``application/x-npz``): every output, ``numpy.load`` reads it.

Bodies are written in slices from the arrays' own memory: a large one is never built whole.
BYTES outputs have no ``.npy`` form without pickle, which the hub never writes.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from contract.errors import InvalidInput
from contract.tensors import datatype_of, encode_tensor, unpack_tensor
from hub.v2.codec import HEADER_LENGTH, to_raw

SLICE = 1 << 20  # bytes per chunk of a streamed body

MEDIA = {
    "json": "application/json",
    "binary": "application/octet-stream",
    "npy": "application/x-npy",
    "npz": "application/x-npz",
}


@dataclass(frozen=True)
class Body:
    chunks: Iterator[bytes]
    media_type: str
    headers: dict[str, str]


def choose(fmt: str | None, accept: str | None) -> str:
    """The format asked by ``?format=``, else the first known type of ``Accept``, else JSON."""
    if fmt is not None:
        if fmt not in MEDIA:
            raise InvalidInput(f"format {fmt!r} is not one of {', '.join(MEDIA)}", "bad_format")
        return fmt
    for part in (accept or "").split(","):
        media = part.split(";")[0].strip().lower()
        for name, known in MEDIA.items():
            if media == known:
                return name
    return "json"


def body(
    fmt: str, packed: Sequence[dict[str, Any]], header: dict[str, Any], output: str | None
) -> Body:
    arrays = [(p["name"], unpack_tensor(p)) for p in packed]
    if fmt == "json":
        tensors = [encode_tensor(name, array) for name, array in arrays]
        return Body(iter([orjson.dumps({**header, "outputs": tensors})]), MEDIA[fmt], {})
    if fmt == "binary":
        return _binary(header, arrays)
    if output is not None:
        arrays = [(n, a) for n, a in arrays if n == output]
        if not arrays:
            names = ", ".join(p["name"] for p in packed)
            raise InvalidInput(f"no output {output!r}; the job's outputs are {names}", "bad_output")
    for name, array in arrays:
        if array.dtype == object:
            raise InvalidInput(
                f"output {name!r} is BYTES, which .npy holds only pickled: ask for json or binary",
                "bad_format",
            )
    if fmt == "npy":
        if len(arrays) != 1:
            raise InvalidInput("an .npy holds one output: name it with ?output=", "bad_output")
        name, array = arrays[0]
        disposition = f'attachment; filename="{header["id"]}-{name}.npy"'
        return Body(_npy(array), MEDIA[fmt], {"Content-Disposition": disposition})
    disposition = f'attachment; filename="{header["id"]}.npz"'
    return Body(_npz(arrays), MEDIA[fmt], {"Content-Disposition": disposition})


def _binary(header: dict[str, Any], arrays: list[tuple[str, np.ndarray]]) -> Body:
    # the stored arrays' own little-endian bytes, not a copy; BYTES are length-prefixed anew
    raws = [
        (name, array, memoryview(to_raw(array)) if array.dtype == object else _data(array))
        for name, array in arrays
    ]
    tensors = [
        {
            "name": name,
            "datatype": datatype_of(array),
            "shape": list(array.shape),
            "parameters": {"binary_data_size": raw.nbytes},
        }
        for name, array, raw in raws
    ]
    head = orjson.dumps({**header, "outputs": tensors})

    def chunks() -> Iterator[bytes]:
        yield head
        for _, _, raw in raws:
            yield from _slices(raw)

    return Body(chunks(), MEDIA["binary"], {HEADER_LENGTH: str(len(head))})


def _slices(data: memoryview) -> Iterator[bytes]:
    for start in range(0, len(data), SLICE):
        yield bytes(data[start : start + SLICE])


def _npy(array: np.ndarray) -> Iterator[bytes]:
    sink = _Sink()
    _write_npy_header(sink, array)
    yield from sink.take()
    yield from _slices(_data(array))


def _npz(arrays: list[tuple[str, np.ndarray]]) -> Iterator[bytes]:
    """A zip of one ``.npy`` per output (what ``numpy.savez`` writes), written as it goes:
    the zip module writes to a stream it cannot seek with data descriptors."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in arrays:
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                _write_npy_header(member, array)
                for piece in _slices(_data(array)):
                    member.write(piece)
                    yield from sink.take()
            yield from sink.take()
    yield from sink.take()


def _write_npy_header(out: Any, array: np.ndarray) -> None:
    np.lib.format.write_array_header_1_0(out, np.lib.format.header_data_from_array_1_0(array))


def _data(array: np.ndarray) -> memoryview:
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return np.ascontiguousarray(little).data.cast("B")


class _Sink:
    """A write-only stream whose bytes are taken out as they come."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def take(self) -> Iterator[bytes]:
        parts, self._parts = self._parts, []
        if parts:
            yield b"".join(parts)
