"""The V2 codec's malformed bodies, one table: each case is the error's kind (class and status),
its machine code, a fragment of the message that says what to fix, and the status a V2 client
gets. Pure functions (hub/v2/codec.py, hub/v2/compression.py): no hub, no Redis, no worker.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from typing import Any

import numpy as np
import orjson
import pytest

from contract.errors import InferhubError, InvalidInput, MalformedRequest, TooLarge
from contract.tensors import DTYPES, decode_tensor, encode_tensor, pack_tensor
from hub.v2.codec import (
    STRUCT_MOST,
    InferRequest,
    encode_response,
    json_tensor,
    parse_request,
    require_text,
)
from hub.v2.compression import decompress
from hub.v2.errors import status_of

FP32 = {"name": "x", "datatype": "FP32", "shape": [1, 4]}
ROW = np.arange(4, dtype="<f4").tobytes()


def doc(**fields: Any) -> tuple[bytes, None]:
    """A JSON-only body; ``inputs`` default to one good FP32 tensor."""
    return orjson.dumps({"inputs": [{**FP32, "data": [1, 2, 3, 4]}], **fields}), None


def tensor(**fields: Any) -> tuple[bytes, None]:
    """A JSON body of one tensor: the good FP32 one with ``fields`` changed."""
    return orjson.dumps({"inputs": [{**FP32, "data": [1, 2, 3, 4], **fields}]}), None


def binary(spec: dict[str, Any], raw: bytes, size: Any = None) -> tuple[bytes, str]:
    """A body with one binary input of ``binary_data_size`` ``size`` (default: ``len(raw)``)."""
    parameters = {"binary_data_size": len(raw) if size is None else size}
    header = orjson.dumps({"inputs": [{**spec, "parameters": parameters}]})
    return header + raw, str(len(header))


def bytes_raw(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


BYTES3 = {"name": "s", "datatype": "BYTES", "shape": [3]}


def nested(depth: int) -> Any:
    data: Any = "a"
    for _ in range(depth):
        data = [data]
    return data


# id: (body, Inference-Header-Content-Length, kind, code, message fragment)
CASES: dict[str, tuple[bytes, str | None, type[InferhubError], str, str]] = {
    # --- the JSON is not JSON, or not an inference request
    "not JSON": (b"{not json", None, MalformedRequest, "malformed_json", "not valid JSON"),
    "NaN literal": (
        b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [NaN]}]}',
        None,
        MalformedRequest,
        "malformed_json",
        "not valid JSON",
    ),
    "not an object": (b"[1, 2]", None, InvalidInput, "invalid_request", "must be a JSON object"),
    "no inputs": (b"{}", None, InvalidInput, "invalid_request", "'inputs' must be a non-empty"),
    "empty inputs": (*doc(inputs=[]), InvalidInput, "invalid_request", "non-empty list"),
    "input not an object": (
        *doc(inputs=[3]),
        InvalidInput,
        "invalid_request",
        "inputs[0] must be an object",
    ),
    "input without a name": (
        *doc(inputs=[{"datatype": "FP32", "shape": [1], "data": [1]}]),
        InvalidInput,
        "invalid_request",
        "inputs[0].name must be a non-empty string",
    ),
    "id not a string": (*doc(id=7), InvalidInput, "invalid_request", "'id' must be a string"),
    "parameters not an object": (
        *doc(parameters=[1]),
        InvalidInput,
        "invalid_request",
        "parameters must be an object",
    ),
    "negative priority": (
        *doc(parameters={"priority": -1}),
        InvalidInput,
        "invalid_request",
        "'priority' must be a non-negative integer, got -1",
    ),
    "timeout not a number": (
        *doc(parameters={"timeout": "soon"}),
        InvalidInput,
        "invalid_request",
        "'timeout' must be a non-negative integer",
    ),
    "binary_data_output not a flag": (
        *doc(parameters={"binary_data_output": "yes"}),
        InvalidInput,
        "invalid_request",
        "'binary_data_output' must be true or false",
    ),
    "outputs not a list": (*doc(outputs={}), InvalidInput, "invalid_request", "must be a list"),
    "output not an object": (
        *doc(outputs=["label"]),
        InvalidInput,
        "invalid_request",
        "outputs[0] must be an object",
    ),
    "output twice": (
        *doc(outputs=[{"name": "y"}, {"name": "y"}]),
        InvalidInput,
        "invalid_input",
        "output 'y' is requested twice",
    ),
    "output binary_data not a flag": (
        *doc(outputs=[{"name": "y", "parameters": {"binary_data": 1}}]),
        InvalidInput,
        "invalid_request",
        "'binary_data' must be true or false",
    ),
    # --- what the protocol allows but inferhub does not do
    "classification not a count": (
        *doc(outputs=[{"name": "y", "parameters": {"classification": "two"}}]),
        InvalidInput,
        "invalid_request",
        "'classification' must be",
    ),
    "shared memory input": (
        *tensor(parameters={"shared_memory_region": "r"}),
        MalformedRequest,
        "unsupported",
        "shared memory is not supported; send the data in the body",
    ),
    "shared memory output": (
        *doc(outputs=[{"name": "y", "parameters": {"shared_memory_region": "r"}}]),
        MalformedRequest,
        "unsupported",
        "output 'y': shared memory is not supported",
    ),
    # --- JSON tensors that do not fit their own declaration
    "input twice": (
        *doc(inputs=[{**FP32, "data": [0] * 4}] * 2),
        InvalidInput,
        "invalid_input",
        "input 'x' is given twice",
    ),
    "wrong datatype": (
        *tensor(datatype="FLOAT"),
        InvalidInput,
        "invalid_input",
        "datatype 'FLOAT' is not one of BOOL",
    ),
    "negative dimension": (
        *tensor(shape=[-1, 4]),
        InvalidInput,
        "invalid_input",
        "shape must be a list of non-negative integers",
    ),
    "boolean dimension": (
        *tensor(shape=[True, 4]),
        InvalidInput,
        "invalid_input",
        "shape must be a list of non-negative integers",
    ),
    "shape and data disagree": (
        *tensor(shape=[2, 4]),
        InvalidInput,
        "invalid_input",
        "shape [2, 4] needs 8 elements, data has 4",
    ),
    "data missing": (*tensor(data=None), InvalidInput, "invalid_input", "'data' is missing"),
    "data not the datatype": (
        *tensor(data=["a", "b", "c", "d"]),
        InvalidInput,
        "invalid_input",
        "data is not FP32",
    ),
    "number beyond the datatype": (
        *tensor(data=[1e39, 0, 0, 0]),
        InvalidInput,
        "invalid_input",
        "beyond FP32's range",
    ),
    "BYTES element not a string": (
        *tensor(datatype="BYTES", data=["a", 1, "b", "c"]),
        InvalidInput,
        "invalid_input",
        "data is not BYTES",
    ),
    "BYTES nested too deep": (
        *tensor(datatype="BYTES", shape=[1], data=nested(65)),
        InvalidInput,
        "invalid_input",
        "nested more than 64 lists deep; send it flat and give 'shape'",
    ),
    "ragged nesting": (
        *tensor(data=[[1, 2], [3]], shape=[2, 2]),
        InvalidInput,
        "invalid_input",
        "data is not FP32",
    ),
    # --- the binary tensor extension: the header's length and the sizes must add up
    "header length not a number": (
        *binary(FP32, ROW)[:1],
        "12a",
        MalformedRequest,
        "malformed_binary",
        "Inference-Header-Content-Length must be a non-negative integer, got '12a'",
    ),
    "header length negative": (
        *binary(FP32, ROW)[:1],
        "-3",
        MalformedRequest,
        "malformed_binary",
        "must be a non-negative integer",
    ),
    "header length past the end": (
        *binary(FP32, ROW)[:1],
        "5000",
        MalformedRequest,
        "malformed_binary",
        "is 5000 but the body has only",
    ),
    "size past the end": (
        *binary(FP32, ROW, size=20),
        MalformedRequest,
        "malformed_binary",
        "binary_data_size 20 runs past the end of the body (16 bytes are left)",
    ),
    "bytes left over": (
        binary(FP32, ROW)[0] + bytes(4),
        binary(FP32, ROW)[1],
        MalformedRequest,
        "malformed_binary",
        "add up to 16 bytes but 20 bytes follow",
    ),
    "size not a number": (
        *binary(FP32, ROW, size="16"),
        InvalidInput,
        "invalid_request",
        "'binary_data_size' must be a non-negative integer, got '16'",
    ),
    "size not the shape's": (
        *binary(FP32, ROW[:12]),
        InvalidInput,
        "invalid_input",
        "FP32 [1, 4] needs 16 bytes, binary_data_size is 12",
    ),
    "data and binary data": (
        *binary({**FP32, "data": [1, 2, 3, 4]}, ROW),
        InvalidInput,
        "invalid_request",
        "give either 'data' or binary_data_size, not both",
    ),
    "BYTES element truncated": (
        *binary(BYTES3, bytes_raw([b"a", b"b"]) + struct.pack("<I", 10) + b"cc"),
        MalformedRequest,
        "malformed_binary",
        "a BYTES element of 10 bytes is truncated (2 bytes are left)",
    ),
    "BYTES length cut short": (
        *binary(BYTES3, bytes_raw([b"a", b"b"]) + b"\x01\x00"),
        MalformedRequest,
        "malformed_binary",
        "a BYTES element length is cut short at byte 10",
    ),
    "fewer BYTES than the shape": (
        *binary(BYTES3, bytes_raw([b"a", b"b"])),
        InvalidInput,
        "invalid_input",
        "shape [3] needs 3 BYTES elements, the binary data has 2",
    ),
    "more BYTES than the shape": (
        *binary(BYTES3, bytes_raw([b"a", b"b", b"c", b"d"])),
        InvalidInput,
        "invalid_input",
        "the shape needs 3 BYTES elements, the binary data has more (bytes left over from byte 15)",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_malformed_body_is_refused_saying_what_to_fix(case: str) -> None:
    body, header_length, kind, code, fragment = CASES[case]
    with pytest.raises(InferhubError) as caught:
        parse_request(body, header_length)
    error = caught.value
    assert type(error) is kind, error
    assert (error.status, error.code) == (kind.status, code)
    assert fragment in error.message, error.message
    assert status_of(error) == 400  # Triton answers every one of them 400


def test_bytes_that_are_not_utf8_are_refused_before_the_job() -> None:
    body, length = binary(
        {"name": "s", "datatype": "BYTES", "shape": [2]}, bytes_raw([b"a", b"\xff"])
    )
    parsed = parse_request(body, length)  # the wire carries any bytes...
    with pytest.raises(InvalidInput) as caught:
        require_text(parsed.arrays)  # ...onnxruntime's string tensors do not
    assert caught.value.code == "invalid_input"
    assert "input 's': BYTES element 1 is not UTF-8 text" in caught.value.message
    assert status_of(caught.value) == 400


def test_nan_in_binary_data_travels_as_in_triton() -> None:
    """Binary FP32 has no JSON literal to refuse: NaN and Infinity pass, as Triton passes them
    (``/v1`` refuses them: tests/test_input_limits.py)."""
    raw = np.array([np.nan, np.inf, -np.inf, 1], dtype="<f4").tobytes()
    parsed = parse_request(*binary(FP32, raw))
    values = parsed.arrays["x"]
    assert np.isnan(values[0, 0]) and np.isinf(values[0, 1:3]).all() and values[0, 3] == 1


def test_unknown_fields_are_ignored_and_unknown_parameters_kept() -> None:
    """Fields the protocol does not define are ignored, at the top and in a tensor; parameters
    it does not reserve are the client's own, passed on with the job."""
    body = orjson.dumps(
        {
            "inputs": [{**FP32, "data": [1, 2, 3, 4], "colour": "red"}],
            "colour": "blue",
            "parameters": {"priority": 2, "tag": "t"},
            "outputs": [{"name": "y", "colour": "green"}],
        }
    )
    parsed = parse_request(body, None)
    assert isinstance(parsed, InferRequest)
    assert list(parsed.arrays) == ["x"] and parsed.priority == 2
    assert parsed.parameters == {"tag": "t"}
    assert [o.name for o in parsed.outputs or []] == ["y"]


# --- Content-Encoding ------------------------------------------------------------------------

# id: (body, encoding, kind, code, message fragment, the status a V2 client gets)
ENCODED: dict[str, tuple[bytes, str, type[InferhubError], str, str, int]] = {
    "unknown encoding": (
        b"\x00\x01",
        "br",
        MalformedRequest,
        "unsupported",
        "Content-Encoding 'br' is not supported; use gzip or deflate",
        400,
    ),
    "not gzip": (
        b"plain text",
        "gzip",
        MalformedRequest,
        "malformed_encoding",
        "not valid gzip",
        400,
    ),
    "gzip truncated": (
        gzip.compress(b"x" * 100)[:-9],
        "gzip",
        MalformedRequest,
        "malformed_encoding",
        "truncated or has bytes after its end",
        400,
    ),
    "deflate with trailing bytes": (
        zlib.compress(b"{}") + b"junk",
        "deflate",
        MalformedRequest,
        "malformed_encoding",
        "truncated or has bytes after its end",
        400,
    ),
    "a bomb": (
        gzip.compress(b" " * 10_001),
        "gzip",
        TooLarge,
        "body_too_large",
        "the decompressed body is over 10000 bytes; send fewer rows",
        413,
    ),
}


@pytest.mark.parametrize("case", list(ENCODED))
def test_a_badly_encoded_body_is_refused(case: str) -> None:
    body, encoding, kind, code, fragment, v2_status = ENCODED[case]
    with pytest.raises(InferhubError) as caught:
        decompress(body, encoding, 10_000)
    error = caught.value
    assert type(error) is kind and error.code == code
    assert fragment in error.message, error.message
    assert status_of(error) == v2_status


@pytest.mark.parametrize("encoding", ["gzip", "x-gzip", " GZIP ", "deflate", "identity", None])
def test_encoded_bodies_decompress(encoding: str | None) -> None:
    name = (encoding or "identity").strip().lower()
    body = b'{"inputs": []}'
    packed = {"gzip": gzip.compress, "x-gzip": gzip.compress, "deflate": zlib.compress}.get(
        name, lambda b: b
    )(body)
    assert decompress(packed, encoding, 100) == body


SPECIAL = [np.nan, np.inf, -np.inf, -0.0, 0.1, 1e-5, 6e4, 2.5, -7.0]


@pytest.mark.parametrize(
    "array",
    [
        *(np.array(SPECIAL, dtype=t) for t in ("<f2", "<f4", "<f8")),
        np.array([1e16, 3.4e38, 1e-40], dtype="<f4"),
        np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32),
        *(np.array([0, 1, 127, 100], dtype=t) for t in ("<i1", "<u1", "<i2", "<u2")),
        np.array([-(2**31), 2**31 - 1], dtype="<i4"),
        np.array([2**32 - 1], dtype="<u4"),
        np.array([-(2**63), 2**63 - 1], dtype="<i8"),
        np.array([2**64 - 1], dtype="<u8"),
        np.array([True, False]),
        np.array([b"a", "\u00e9".encode()], dtype=object),
        np.zeros((0, 4), dtype=np.float32),
        np.random.default_rng(1).standard_normal((2, STRUCT_MOST)).astype(np.float32),
    ],
    ids=lambda a: f"{a.dtype}{list(a.shape)}",
)
def test_json_outputs_read_as_from_python_numbers(array: np.ndarray) -> None:
    """Written from the array by orjson, an output's JSON is the text a list of Python numbers
    gives (floats as the doubles they widen to, NaN and infinities as null), byte for byte."""
    body, header_length = encode_response({"model_name": "m"}, [("out", array, False)])
    assert header_length is None
    assert body == orjson.dumps({"model_name": "m", "outputs": [encode_tensor("out", array)]})
    # and so is it read from its packed bytes, as a worker's answer comes (no array made)
    packed = encode_response({"model_name": "m"}, [json_tensor(pack_tensor("out", array))])
    assert packed == (body, None)


NUMBERS = [
    [1.5, -2.25, 0.1, -0.0],
    [1, 2, 3],
    [True, False, 1],
    [16777217, 2**53 + 1, 2**60 + 3, 123456789012345678],
    [1e-40, 5e-324, 65519.0],
    [1e39],
    [70000.0],
    [300],
    [-1],
    [2**64 - 1],
    [2**64],
    ["1.5"],
    [None],
    [[1, 2], [3, 4]],
    [],
]


@pytest.mark.parametrize("datatype", [d for d in DTYPES if d not in ("BOOL", "BYTES")])
@pytest.mark.parametrize("data", NUMBERS, ids=str)
def test_json_numbers_decode_as_numpy_converts_them(datatype: str, data: list[Any]) -> None:
    """A flat list of numbers is packed by struct (contract/tensors.py), anything else is
    numpy's to convert: either way, the array numpy makes of the list, byte for byte, or a 400
    where numpy refuses it."""
    tensor = {"name": "x", "datatype": datatype, "data": data}
    try:
        with np.errstate(over="raise"):
            expected = np.asarray(data, dtype=DTYPES[datatype])
    except (FloatingPointError, TypeError, ValueError, OverflowError):
        with pytest.raises(InvalidInput):
            decode_tensor(tensor)
        return
    array = decode_tensor(tensor)
    assert (array.dtype, array.shape) == (expected.dtype, expected.shape)
    assert array.tobytes() == expected.tobytes()
