"""Tensors: their datatypes, the KServe V2 JSON form, and the packed form inside Redis.

Tensors reach clients in the KServe V2 JSON form ``{"name", "datatype", "shape", "data"}``;
inside Redis they travel packed: raw little-endian bytes + datatype + shape, in msgpack.
"""

from __future__ import annotations

import functools
import itertools
import math
import struct
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from contract.errors import InvalidInput

DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("bool"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype("object"),
}


# struct's letter for each datatype whose elements are plain little-endian numbers
STRUCT_CODES = {
    "BOOL": "?",
    "UINT8": "B",
    "UINT16": "H",
    "UINT32": "I",
    "UINT64": "Q",
    "INT8": "b",
    "INT16": "h",
    "INT32": "i",
    "INT64": "q",
    "FP16": "e",
    "FP32": "f",
    "FP64": "d",
}

# how deep nested ``data`` may be: numpy's bound on an array's dimensions
MAX_NESTING = 64


# --- tensors ---------------------------------------------------------------------------------


def datatype_of(array: np.ndarray) -> str:
    return _datatype(array.dtype)


@functools.cache  # a few dtypes, asked several times per request
def _datatype(dtype: np.dtype[Any]) -> str:
    if dtype.kind in "OSU":
        return "BYTES"
    for name, known in DTYPES.items():
        if known == dtype.newbyteorder("<"):
            return name
    raise InvalidInput(f"arrays of dtype {dtype} have no V2 datatype")


def decode_tensor(tensor: Mapping[str, Any], datatype: str | None = None) -> np.ndarray:
    """A V2 JSON tensor (flat or nested ``data``) as a numpy array of its shape."""
    name = tensor.get("name", "?")
    datatype = tensor.get("datatype") or datatype
    if not isinstance(datatype, str) or datatype not in DTYPES:
        raise InvalidInput(
            f"input '{name}': datatype {datatype!r} is not one of {', '.join(DTYPES)}"
        )
    data = tensor.get("data")
    if data is None:
        raise InvalidInput(f"input '{name}': 'data' is missing")
    try:
        if datatype == "BYTES":
            flat = [_to_bytes(item) for item in _leaves(data, name)]
            array = np.empty(len(flat), dtype=object)
            array[:] = flat
        else:
            numbers = _numbers(data, datatype)
            if numbers is None:
                with np.errstate(over="raise"):  # 1e39 as FP32 would be Infinity
                    numbers = np.asarray(data, dtype=DTYPES[datatype])
            array = numbers
    except FloatingPointError:
        raise InvalidInput(
            f"input '{name}': data holds a number beyond {datatype}'s range"
        ) from None
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidInput(f"input '{name}': data is not {datatype}: {exc}") from None
    shape = tensor.get("shape")
    if shape is None:
        return array
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise InvalidInput(f"input '{name}': shape must be a list of non-negative integers")
    if array.size != math.prod(shape):
        raise InvalidInput(
            f"input '{name}': shape {shape} needs {math.prod(shape)} elements, data has {array.size}"
        )
    return array.reshape(shape)


PACKED_MOST = 65_536
"""The most numbers ``_numbers`` packs by ``struct``; past that, numpy's conversion of the list
is as fast or faster (1,310,720 floats in rows of 64: 32 ms, against 47)."""


def _numbers(data: Any, datatype: str) -> np.ndarray | None:
    """A flat list of numbers, or a list of rows of one length (``/v1``'s ``data``), as an
    array of ``datatype``, each number packed by ``struct``, which takes a number as numpy
    does (a bool as 0 or 1, an int exactly, a float rounded to the nearest) and refuses what
    numpy would refuse or convert otherwise (one out of range, a float for an integer type,
    text, a list deeper down): None then, and numpy decodes it as ever, errors and all.
    numpy's own conversion of a list, cold on a lone request, was the largest part of
    decoding a one-row inference (~20 µs of ~70 in the hub's trace; a row of 64 floats in
    a list, warm: 15 µs, against 5 packed)."""
    code = STRUCT_CODES.get(datatype)
    if code is None or datatype == "BOOL" or type(data) is not list:
        return None  # BOOL: struct takes any object's truth, numpy does not
    shape: tuple[int, ...] = (len(data),)
    if data and type(data[0]) is list:
        width = len(data[0])
        if len(data) * width > PACKED_MOST:
            return None
        if not all(type(row) is list and len(row) == width for row in data):
            return None  # ragged, or rows and numbers mixed: numpy says what is wrong
        shape = (len(data), width)
        data = list(itertools.chain.from_iterable(data))
    if len(data) > PACKED_MOST:
        return None
    array = np.empty(len(data), dtype=DTYPES[datatype])
    try:
        struct.pack_into(f"<{len(data)}{code}", array.data, 0, *data)
    except (struct.error, OverflowError, TypeError):
        return None
    return array.reshape(shape)


def _leaves(data: Any, name: str) -> list[Any]:
    """Nested lists' elements in row-major order. Iterative, and at most ``MAX_NESTING`` deep
    (numpy's own bound on dimensions), so that no nesting can exhaust the stack."""
    if not isinstance(data, list):
        return [data]
    leaves: list[Any] = []
    levels: list[Iterator[Any]] = [iter(data)]
    while levels:
        for item in levels[-1]:
            if isinstance(item, list):
                if len(levels) == MAX_NESTING:
                    raise InvalidInput(
                        f"input '{name}': data is nested more than {MAX_NESTING} lists deep; "
                        "send it flat and give 'shape'"
                    )
                levels.append(iter(item))
                break
            leaves.append(item)
        else:
            levels.pop()
    return leaves


def _to_bytes(item: Any) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode()
    raise TypeError(f"BYTES elements are strings, got {type(item).__name__}")


def encode_tensor(name: str, array: np.ndarray) -> dict[str, Any]:
    """A numpy array as a V2 JSON tensor with flat data."""
    if array.dtype == object:
        data: list[Any] = [
            x.decode(errors="replace") if isinstance(x, bytes) else str(x) for x in array.flat
        ]
    else:
        data = array.reshape(-1).tolist()
    return {"name": name, "datatype": datatype_of(array), "shape": list(array.shape), "data": data}


def pack_tensor(name: str, array: np.ndarray) -> dict[str, Any]:
    """A numpy array for Redis: raw little-endian bytes (a list of bytes for BYTES)."""
    datatype = datatype_of(array)
    if datatype == "BYTES":
        raw: bytes | list[bytes] = [_to_bytes(x) for x in array.flat]
    else:
        raw = np.ascontiguousarray(array, dtype=DTYPES[datatype]).tobytes()
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "raw": raw}


def view_tensor(name: str, array: np.ndarray) -> dict[str, Any]:
    """``pack_tensor`` without its copy: the raw bytes are a view of the array's memory (copied
    only when not contiguous little-endian), for what is written at once and not kept."""
    datatype = datatype_of(array)
    if datatype == "BYTES":
        return pack_tensor(name, array)
    raw = np.ascontiguousarray(array, dtype=DTYPES[datatype]).data.cast("B")
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "raw": raw}


def view_rows(name: str, array: np.ndarray, counts: list[int]) -> list[dict[str, Any]]:
    """``view_tensor`` of consecutive slices of ``array``'s rows, ``counts[i]`` rows each
    (summing to its first dimension): one conversion of the array, then each slice's bytes a
    view of its memory, for a batch's outputs split among its requests and written at once."""
    datatype = datatype_of(array)
    if datatype == "BYTES":
        bounds = itertools.pairwise(itertools.accumulate(counts, initial=0))
        return [pack_tensor(name, array[a:b]) for a, b in bounds]
    whole = np.ascontiguousarray(array, dtype=DTYPES[datatype])
    raw, tail = whole.data.cast("B"), list(whole.shape[1:])
    row = whole.itemsize * math.prod(tail)
    views, start = [], 0
    for count in counts:
        end = start + count * row
        views.append(
            {"name": name, "datatype": datatype, "shape": [count, *tail], "raw": raw[start:end]}
        )
        start = end
    return views


def unpack_tensor(packed: Mapping[str, Any]) -> np.ndarray:
    shape = packed["shape"]
    if packed["datatype"] == "BYTES":
        array = np.empty(len(packed["raw"]), dtype=object)
        array[:] = packed["raw"]
        return array.reshape(shape)
    return np.frombuffer(packed["raw"], dtype=DTYPES[packed["datatype"]]).reshape(shape)


def packed_to_json(packed: Mapping[str, Any]) -> dict[str, Any]:
    return encode_tensor(packed["name"], unpack_tensor(packed))


# --- serialization ---------------------------------------------------------------------------
