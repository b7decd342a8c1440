"""Triton's raw binary request: ``Inference-Header-Content-Length: 0`` and a body that is
nothing but the tensor data of the model's one input. Its datatype and shape are the model's,
the rows as many as the bytes make; every output is answered, as JSON.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from contract.errors import InvalidInput
from contract.tensors import DTYPES
from hub.v2 import codec


def is_raw(header_length: str | None) -> bool:
    return header_length is not None and header_length.strip() == "0"


def parse_any(
    body: bytes,
    header_length: str | None,
    inspect: Callable[[codec.Declared], None],
    entry: Mapping[str, Any],
    version: str,
) -> codec.InferRequest:
    """The request, whether raw (``is_raw``) or of the usual form (``codec.parse_request``)."""
    if not is_raw(header_length):
        return codec.parse_request(body, header_length, inspect)
    name, datatype, shape = _shape(body, entry, version)
    inspect(codec.Declared([codec.DeclaredInput(name, datatype, shape)], {}))
    source = "the raw body has"
    return codec.InferRequest(arrays={name: codec.from_raw(name, datatype, shape, body, source)})


def _shape(body: bytes, entry: Mapping[str, Any], version: str) -> tuple[str, str, list[int]]:
    """The one input's name, datatype and shape, the rows counted from the body's size."""
    inputs = entry["versions"][version]["inputs"]
    if len(inputs) != 1:
        raise InvalidInput(
            f"a raw binary request ({codec.HEADER_LENGTH}: 0) is for a model of one input; "
            f"'{entry['name']}' has {len(inputs)}: send a JSON header naming each"
        )
    spec = inputs[0]
    name, datatype, dims = spec["name"], spec["datatype"], list(spec["shape"])
    if datatype == "BYTES" or any(d < 0 for d in dims[1:]):
        raise InvalidInput(
            f"a raw binary request cannot say the shape of input '{name}' ({datatype} {dims}): "
            "send a JSON header with its shape"
        )
    if dims[:1] != [-1]:
        return name, datatype, dims
    row_bytes = math.prod(dims[1:]) * DTYPES[datatype].itemsize
    if not body or len(body) % row_bytes:
        raise InvalidInput(
            f"a raw binary body of {len(body)} bytes is not whole rows of input '{name}' "
            f"({datatype} {dims}: {row_bytes} bytes a row)"
        )
    return name, datatype, [len(body) // row_bytes, *dims[1:]]
