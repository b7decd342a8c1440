"""The KServe V2 (Open Inference Protocol) HTTP wire format, with Triton's binary tensor extension.

Pure functions from bytes to arrays and back; no FastAPI, no Redis, so that every malformed body
can be tried here directly (tests/test_v2_codec.py). Every problem with a request is an
``InferhubError`` whose message says what to fix, never a 500: ``MalformedRequest`` when the
body cannot be read (``malformed_json``, ``malformed_binary``, ``unsupported``),
``InvalidInput`` when it is not a V2 request (``invalid_request``) or its tensors do not fit
(``invalid_input``). The router answers each as Triton does (``hub/v2/errors.py``).

Binary tensor data: the body is the JSON header (``Inference-Header-Content-Length`` bytes)
followed by each binary input's raw bytes in input order, ``parameters.binary_data_size`` bytes
each, little-endian, BYTES elements as a 4-byte little-endian length and the bytes.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from contract.errors import InvalidInput, MalformedRequest
from contract.tensors import (
    DTYPES,
    STRUCT_CODES,
    datatype_of,
    decode_tensor,
    encode_tensor,
    unpack_tensor,
)
from hub.v2.unsupported import datatype_error, refuse_sequence

HEADER_LENGTH = "Inference-Header-Content-Length"
HEADER_LENGTH_KEY = HEADER_LENGTH.lower().encode()  # as the ASGI scope names it

# request parameters the protocol itself defines; the rest are the client's own
RESERVED_PARAMETERS = frozenset({"binary_data_output", "priority", "timeout"})


def _schema(message: str) -> InvalidInput:
    """JSON that is not a V2 inference request: a field of the wrong type, or missing."""
    return InvalidInput(message, "invalid_request")


def _framing(message: str) -> MalformedRequest:
    """Binary tensor data whose sizes and lengths do not add up."""
    return MalformedRequest(message, "malformed_binary")


def _unsupported(message: str) -> MalformedRequest:
    return MalformedRequest(message, "unsupported")


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool | None  # None: as the request's ``binary_data_output`` says
    classification: int = 0  # > 0: the k best classes of each row (hub/v2/classification.py)


@dataclass(frozen=True)
class InferRequest:
    arrays: dict[str, np.ndarray]
    id: str | None = None
    outputs: list[RequestedOutput] | None = None
    binary_output: bool = False
    priority: int = 0  # Triton's: 0 the default, 1 the highest, 2 the next...
    timeout_us: int = 0  # 0: none given
    parameters: dict[str, Any] = field(default_factory=dict)


# --- requests --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeclaredInput:
    name: str
    datatype: str
    shape: list[int]


@dataclass(frozen=True)
class Declared:
    """What a request says of itself before any tensor data is decoded, so that a request the
    model cannot take is refused at once, however much data it carries."""

    inputs: list[DeclaredInput]
    parameters: dict[str, Any]  # the client's own: the protocol's reserved ones left out


def parse_request(
    body: bytes, header_length: str | None, inspect: Callable[[Declared], None] | None = None
) -> InferRequest:
    """An inference request body (JSON, or JSON + binary tensors) as arrays and options;
    ``inspect`` may refuse what the header declares (by raising) before the data is decoded."""
    header, binary = _split(body, header_length)
    try:
        doc = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise MalformedRequest(
            f"the inference header is not valid JSON: {exc}", "malformed_json"
        ) from None
    if not isinstance(doc, dict):
        raise _schema("the inference request must be a JSON object")
    parameters = _object(doc.get("parameters"), "parameters")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise _schema("'inputs' must be a non-empty list of tensors")
    declared: dict[str, DeclaredInput] = {}
    for i, tensor in enumerate(inputs):
        if not isinstance(tensor, dict):
            raise _schema(f"inputs[{i}] must be an object")
        name = _string(tensor.get("name"), f"inputs[{i}].name")
        if name in declared:
            raise InvalidInput(f"input '{name}' is given twice")
        declared[name] = _declare(name, tensor)
    refuse_sequence(parameters)
    own = {k: v for k, v in parameters.items() if k not in RESERVED_PARAMETERS}
    if inspect is not None:
        inspect(Declared(list(declared.values()), own))

    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for tensor, spec in zip(inputs, declared.values(), strict=True):
        array, used = _input(spec, tensor, binary, offset)
        arrays[spec.name] = array
        offset += used
    if offset != len(binary):
        raise _framing(
            f"the binary data sizes add up to {offset} bytes but {len(binary)} bytes follow "
            "the inference header"
        )

    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _schema("'id' must be a string")
    return InferRequest(
        arrays=arrays,
        id=request_id,
        outputs=_outputs(doc.get("outputs")),
        binary_output=_flag(parameters, "binary_data_output", "parameters"),
        priority=_count(parameters, "priority"),
        timeout_us=_count(parameters, "timeout"),
        parameters=own,
    )


def require_text(arrays: dict[str, np.ndarray]) -> None:
    """The wire carries any bytes, but onnxruntime's string tensors hold UTF-8 text only: say
    so now rather than fail the job later."""
    for name, array in arrays.items():
        if array.dtype != object:
            continue
        for i, item in enumerate(array.flat):
            try:
                item.decode()
            except UnicodeDecodeError:
                raise InvalidInput(
                    f"input '{name}': BYTES element {i} is not UTF-8 text, which onnxruntime "
                    "string tensors need"
                ) from None


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    text = header_length.strip()
    if not text.isascii() or not text.isdigit():
        raise _framing(f"{HEADER_LENGTH} must be a non-negative integer, got {header_length!r}")
    length = int(text)
    if length > len(body):
        raise _framing(f"{HEADER_LENGTH} is {length} but the body has only {len(body)} bytes")
    return body[:length], body[length:]


def _declare(name: str, tensor: dict[str, Any]) -> DeclaredInput:
    parameters = _object(tensor.get("parameters"), f"input '{name}': parameters")
    if "shared_memory_region" in parameters:
        raise _unsupported(
            f"input '{name}': shared memory is not supported; send the data in the body"
        )
    datatype = tensor.get("datatype")
    if datatype not in DTYPES:
        raise datatype_error(name, datatype)
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise InvalidInput(f"input '{name}': shape must be a list of non-negative integers")
    return DeclaredInput(name, datatype, shape)


def _input(
    spec: DeclaredInput, tensor: dict[str, Any], binary: bytes, offset: int
) -> tuple[np.ndarray, int]:
    """The input's array and how many bytes of the binary section it used."""
    name = spec.name
    parameters = _object(tensor.get("parameters"), f"input '{name}': parameters")
    if "binary_data_size" not in parameters:
        return decode_tensor(tensor), 0  # its name is ``name``, checked a string
    if tensor.get("data") is not None:
        raise _schema(f"input '{name}': give either 'data' or binary_data_size, not both")
    size = _count(parameters, "binary_data_size", f"input '{name}': parameters")
    if offset + size > len(binary):
        raise _framing(
            f"input '{name}': binary_data_size {size} runs past the end of the body "
            f"({len(binary) - offset} bytes are left)"
        )
    raw = binary[offset : offset + size]
    return from_raw(name, spec.datatype, spec.shape, raw), size


def from_raw(
    name: str, datatype: str, shape: list[int], raw: bytes, source: str = "binary_data_size is"
) -> np.ndarray:
    """An input's array from its binary tensor data (``to_raw``'s form); ``source`` names
    where the bytes came from in the message that says they do not fit."""
    count = math.prod(shape)
    if datatype == "BYTES":
        items = deserialize_bytes(raw, name, count)
        if len(items) != count:
            raise InvalidInput(
                f"input '{name}': shape {shape} needs {count} BYTES elements, "
                f"the binary data has {len(items)}"
            )
        array = np.empty(count, dtype=object)
        array[:] = items
        return array.reshape(shape)
    dtype = DTYPES[datatype]
    if len(raw) != count * dtype.itemsize:
        raise InvalidInput(
            f"input '{name}': {datatype} {shape} needs {count * dtype.itemsize} bytes, "
            f"{source} {len(raw)}"
        )
    if datatype == "BOOL":  # any non-zero byte is true, as in C
        return (np.frombuffer(raw, dtype=np.uint8) != 0).reshape(shape)
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def deserialize_bytes(raw: bytes, name: str = "?", most: int | None = None) -> list[bytes]:
    """BYTES elements: each a 4-byte little-endian length and that many bytes; more than
    ``most`` of them is refused as soon as the next one starts."""
    items: list[bytes] = []
    at = 0
    while at < len(raw):
        if most is not None and len(items) == most:
            raise InvalidInput(
                f"input '{name}': the shape needs {most} BYTES elements, the binary data has "
                f"more (bytes left over from byte {at})"
            )
        if at + 4 > len(raw):
            raise _framing(f"input '{name}': a BYTES element length is cut short at byte {at}")
        (length,) = struct.unpack_from("<I", raw, at)
        at += 4
        if at + length > len(raw):
            raise _framing(
                f"input '{name}': a BYTES element of {length} bytes is truncated "
                f"({len(raw) - at} bytes are left)"
            )
        items.append(raw[at : at + length])
        at += length
    return items


def serialize_bytes(array: np.ndarray) -> bytes:
    parts = []
    for item in array.flat:
        data = item if isinstance(item, bytes) else str(item).encode()
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)


def _outputs(raw: Any) -> list[RequestedOutput] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise _schema("'outputs' must be a list")
    outputs: list[RequestedOutput] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise _schema(f"outputs[{i}] must be an object")
        name = _string(item.get("name"), f"outputs[{i}].name")
        if any(o.name == name for o in outputs):
            raise InvalidInput(f"output '{name}' is requested twice")
        parameters = _object(item.get("parameters"), f"output '{name}': parameters")
        if "shared_memory_region" in parameters:
            raise _unsupported(f"output '{name}': shared memory is not supported")
        binary = (
            _flag(parameters, "binary_data", f"output '{name}'")
            if "binary_data" in parameters
            else None
        )
        classes = _count(parameters, "classification", f"output '{name}'")
        outputs.append(RequestedOutput(name, binary, classes))
    return outputs


def _object(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _schema(f"{where} must be an object")
    return value


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise _schema(f"{where} must be a non-empty string")
    return value


def _flag(parameters: dict[str, Any], key: str, where: str) -> bool:
    value = parameters.get(key, False)
    if not isinstance(value, bool):
        raise _schema(f"{where}: '{key}' must be true or false")
    return value


def _count(parameters: dict[str, Any], key: str, where: str = "parameters") -> int:
    value = parameters.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _schema(f"{where}: '{key}' must be a non-negative integer, got {value!r}")
    return value


# --- responses -------------------------------------------------------------------------------


Output = tuple[str, np.ndarray, bool] | dict[str, Any]
"""A response's output: (name, array, binary), or a JSON tensor made already
(``json_tensor``)."""


def encode_response(header: dict[str, Any], outputs: list[Output]) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary outputs follow it.

    ``outputs`` are (name, array, binary), or JSON tensors; binary ones carry
    ``binary_data_size`` and their bytes follow the header in the same order.
    """
    tensors: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for output in outputs:
        if isinstance(output, dict):
            tensors.append(output)
            continue
        name, array, binary = output
        if binary:
            raw = to_raw(array)
            blobs.append(raw)
            shape = list(array.shape)
            tensors.append(
                {
                    "name": name,
                    "datatype": datatype_of(array),
                    "shape": shape,
                    "parameters": {"binary_data_size": len(raw)},
                }
            )
        else:
            tensors.append(_json_tensor(name, array))
    head = orjson.dumps({**header, "outputs": tensors}, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)


def _json_tensor(name: str, array: np.ndarray) -> dict[str, Any]:
    """``encode_tensor``'s tensor, its numbers written by orjson from the array itself: the
    same text (a float as the double it widens to, NaN and infinities as null, as a list of
    Python numbers gives) without a Python number per element, ~40% less CPU for 1,024 floats."""
    if array.dtype == object:
        return encode_tensor(name, array)
    wide = np.float64 if array.dtype.kind == "f" else array.dtype.newbyteorder("=")
    data = np.ascontiguousarray(array.reshape(-1), dtype=wide)
    return {"name": name, "datatype": datatype_of(array), "shape": list(array.shape), "data": data}


STRUCT_MOST = 128
"""The most numbers of an output ``json_tensor`` reads by ``struct``: past ~150 (in a loop),
orjson's writing of the numpy array, which makes no Python number per element, is faster (15
ms, not 41, for 614,400 floats)."""


def json_tensor(packed: Mapping[str, Any]) -> dict[str, Any]:
    """A packed output (``contract.tensors.pack_tensor``) as a JSON tensor, as
    ``_json_tensor`` writes its array. A small one's numbers are read from its bytes by
    ``struct``, as the Python numbers (a float as the double it widens to) whose text orjson
    writes: no numpy on the way, whose array, view and cast cost more than a few numbers (~15
    µs of a one-row inference's answer, on a hub that is cold between requests)."""
    code = STRUCT_CODES.get(packed["datatype"])
    shape = packed["shape"]
    count = math.prod(shape)
    if code is None or count > STRUCT_MOST:  # BYTES: text, as encode_tensor writes it
        return _json_tensor(packed["name"], unpack_tensor(packed))
    data = struct.unpack(f"<{count}{code}", packed["raw"])
    return {"name": packed["name"], "datatype": packed["datatype"], "shape": shape, "data": data}


def to_raw(array: np.ndarray) -> bytes:
    """An array's binary tensor data: little-endian, BYTES length-prefixed."""
    datatype = datatype_of(array)
    if datatype == "BYTES":
        return serialize_bytes(array)
    return np.ascontiguousarray(array, dtype=DTYPES[datatype]).tobytes()
