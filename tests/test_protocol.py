"""The shared contract: V2 JSON tensors, packed tensors for Redis, msgpack; and the V2 codec's bounds."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from contract.errors import InvalidInput
from contract.tensors import (
    DTYPES,
    datatype_of,
    decode_tensor,
    encode_tensor,
    pack_tensor,
    packed_to_json,
    unpack_tensor,
)
from contract.wire import dumps, loads
from hub.v2.codec import (
    Declared,
    DeclaredInput,
    deserialize_bytes,
    parse_request,
    serialize_bytes,
)

NUMERIC = [name for name in DTYPES if name != "BYTES"]


def sample(datatype: str) -> np.ndarray:
    """A 2x3 array of ``datatype`` with values at the edges of its range."""
    dtype = DTYPES[datatype]
    if datatype == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    if dtype.kind == "f":
        info = np.finfo(dtype)
        values = [0.0, -1.5, float(info.max), float(info.tiny), 3.25, -0.0]
    else:
        info = np.iinfo(dtype)
        values = [0, 1, int(info.max), int(info.min), 7, int(info.max) - 1]
    return np.array(values, dtype=dtype).reshape(2, 3)


def test_decode_flat_data_with_shape() -> None:
    tensor = {"name": "x", "datatype": "FP32", "shape": [2, 3], "data": [1, 2, 3, 4, 5, 6]}
    array = decode_tensor(tensor)
    assert array.dtype == np.float32
    assert array.shape == (2, 3)
    np.testing.assert_array_equal(array, [[1, 2, 3], [4, 5, 6]])


def test_decode_nested_data_without_shape_keeps_its_shape() -> None:
    array = decode_tensor({"name": "x", "datatype": "INT64", "data": [[1, 2], [3, 4], [5, 6]]})
    assert array.dtype == np.int64
    assert array.shape == (3, 2)
    np.testing.assert_array_equal(array, [[1, 2], [3, 4], [5, 6]])


def test_decode_nested_data_reshaped_to_the_given_shape() -> None:
    array = decode_tensor(
        {"name": "x", "datatype": "FP64", "shape": [3, 2], "data": [[1, 2, 3], [4, 5, 6]]}
    )
    assert array.shape == (3, 2)
    np.testing.assert_array_equal(array.reshape(-1), [1, 2, 3, 4, 5, 6])


def test_decode_takes_the_datatype_from_the_model_when_omitted() -> None:
    array = decode_tensor({"name": "x", "data": [[1, 2]]}, "FP16")
    assert array.dtype == np.float16


@pytest.mark.parametrize("datatype", NUMERIC)
def test_pack_unpack_round_trip(datatype: str) -> None:
    array = sample(datatype)
    packed = pack_tensor("t", array)
    assert packed["datatype"] == datatype
    assert packed["shape"] == [2, 3]
    assert isinstance(packed["raw"], bytes)
    assert len(packed["raw"]) == array.size * DTYPES[datatype].itemsize
    # through msgpack, as it travels in Redis
    back = unpack_tensor(loads(dumps(packed)))
    assert back.dtype == DTYPES[datatype]
    assert back.shape == array.shape
    np.testing.assert_array_equal(back, array)


@pytest.mark.parametrize("datatype", NUMERIC)
def test_encode_decode_round_trip(datatype: str) -> None:
    array = sample(datatype)
    tensor = encode_tensor("t", array)
    assert tensor == {
        "name": "t",
        "datatype": datatype,
        "shape": [2, 3],
        "data": array.reshape(-1).tolist(),
    }
    back = decode_tensor(tensor)
    assert back.dtype == DTYPES[datatype]
    np.testing.assert_array_equal(back, array)


@pytest.mark.parametrize("datatype", NUMERIC)
def test_packed_to_json_matches_encode(datatype: str) -> None:
    array = sample(datatype)
    assert packed_to_json(pack_tensor("t", array)) == encode_tensor("t", array)


def test_big_endian_arrays_are_packed_little_endian() -> None:
    array = np.array([1, 256, 65535], dtype=">u4")
    packed = pack_tensor("t", array)
    assert packed["datatype"] == "UINT32"
    assert packed["raw"] == np.array([1, 256, 65535], dtype="<u4").tobytes()
    np.testing.assert_array_equal(unpack_tensor(packed), [1, 256, 65535])


def test_bytes_decode_from_strings_and_nested_lists() -> None:
    array = decode_tensor(
        {"name": "s", "datatype": "BYTES", "shape": [2, 2], "data": [["a", "é"], ["", "xyz"]]}
    )
    assert array.dtype == object
    assert array.shape == (2, 2)
    assert array.tolist() == [[b"a", "é".encode()], [b"", b"xyz"]]


def test_bytes_round_trip_pack_and_encode() -> None:
    array = decode_tensor({"name": "s", "datatype": "BYTES", "data": ["hello", "wörld", ""]})
    assert datatype_of(array) == "BYTES"
    packed = loads(dumps(pack_tensor("s", array)))
    assert packed["raw"] == [b"hello", "wörld".encode(), b""]
    back = unpack_tensor(packed)
    assert back.tolist() == [b"hello", "wörld".encode(), b""]
    assert encode_tensor("s", back) == {
        "name": "s",
        "datatype": "BYTES",
        "shape": [3],
        "data": ["hello", "wörld", ""],
    }


def test_bytes_elements_must_be_strings() -> None:
    with pytest.raises(InvalidInput, match=r"input 's': data is not BYTES.*got int"):
        decode_tensor({"name": "s", "datatype": "BYTES", "data": ["ok", 3]})


def test_shape_and_size_mismatch_names_both() -> None:
    with pytest.raises(InvalidInput) as info:
        decode_tensor({"name": "x", "datatype": "FP32", "shape": [2, 3], "data": [1, 2, 3, 4]})
    message = str(info.value)
    assert "input 'x'" in message
    assert "[2, 3]" in message
    assert "6 elements" in message
    assert "has 4" in message


def test_negative_or_non_integer_shape_is_refused() -> None:
    for shape in ([-1, 2], [1.5, 2], "2x2"):
        with pytest.raises(InvalidInput, match="shape must be a list of non-negative integers"):
            decode_tensor({"name": "x", "datatype": "FP32", "shape": shape, "data": [1, 2]})


def test_ragged_data_is_refused() -> None:
    with pytest.raises(InvalidInput, match=r"input 'x': data is not FP32"):
        decode_tensor({"name": "x", "datatype": "FP32", "data": [[1, 2], [3]]})


def test_non_numeric_data_is_refused() -> None:
    with pytest.raises(InvalidInput, match=r"input 'x': data is not INT32"):
        decode_tensor({"name": "x", "datatype": "INT32", "data": ["one", "two"]})


def test_out_of_range_integer_is_refused() -> None:
    with pytest.raises(InvalidInput, match=r"input 'x': data is not UINT8"):
        decode_tensor({"name": "x", "datatype": "UINT8", "data": [1, 300]})


def test_missing_data_is_refused() -> None:
    with pytest.raises(InvalidInput, match="input 'x': 'data' is missing"):
        decode_tensor({"name": "x", "datatype": "FP32", "shape": [1]})


@pytest.mark.parametrize("datatype", ["FLOAT32", "fp32", None, "STRING"])
def test_bad_datatype_name_lists_the_valid_ones(datatype: str | None) -> None:
    with pytest.raises(InvalidInput) as info:
        decode_tensor({"name": "x", "datatype": datatype, "data": [1.0]})
    message = str(info.value)
    assert "input 'x'" in message
    assert repr(datatype) in message
    assert "FP32" in message and "BYTES" in message


def test_array_without_v2_datatype_is_refused() -> None:
    with pytest.raises(InvalidInput, match="complex128"):
        datatype_of(np.zeros(2, dtype=np.complex128))


def test_msgpack_keeps_bytes_and_text_apart() -> None:
    body = {"text": "é", "raw": b"\x00\xff", "n": [1, 2.5, None, True]}
    assert loads(dumps(body)) == body


def test_bytes_nested_deeper_than_numpy_allows_is_refused_with_what_to_do() -> None:
    data: object = ["a"]
    for _ in range(990):  # deeper than Python's recursion limit lets a recursive walk go
        data = [data]
    with pytest.raises(InvalidInput, match=r"nested more than 64 lists deep; send it flat"):
        decode_tensor({"name": "s", "datatype": "BYTES", "data": data})


def test_bytes_nested_64_deep_decodes_in_row_major_order() -> None:
    data: object = [["a", "b"], ["c"]]
    for _ in range(62):
        data = [data]
    array = decode_tensor({"name": "s", "datatype": "BYTES", "data": data})
    assert list(array) == [b"a", b"b", b"c"]


@pytest.mark.parametrize(("datatype", "value"), [("FP32", 1e39), ("FP16", 70000.0)])
def test_a_number_beyond_the_datatypes_range_is_refused(datatype: str, value: float) -> None:
    with pytest.raises(InvalidInput, match=f"beyond {datatype}'s range"):
        decode_tensor({"name": "x", "datatype": datatype, "data": [1.0, value]})


def test_v2_header_is_inspected_before_any_data_is_decoded() -> None:
    seen: list[Declared] = []

    class Refused(Exception):
        pass

    def inspect(declared: Declared) -> None:
        seen.append(declared)
        raise Refused

    # the BYTES data is cut short: decoding it would raise an error
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "s",
                    "datatype": "BYTES",
                    "shape": [3],
                    "parameters": {"binary_data_size": 6},
                }
            ],
            "parameters": {"priority": 1, "tag": "x"},
        }
    )
    with pytest.raises(Refused):
        parse_request(header + b"\x09\x00\x00\x00ab", str(len(header)), inspect)
    assert seen == [Declared([DeclaredInput("s", "BYTES", [3])], {"tag": "x"})]


def test_bytes_past_the_shapes_count_are_refused_at_the_first_extra_element() -> None:
    raw = serialize_bytes(np.array([b"a", b"b", b"c"], dtype=object)) + b"\xff"
    with pytest.raises(InvalidInput, match="needs 2 BYTES elements, the binary data has more"):
        deserialize_bytes(raw, "s", 2)
    assert deserialize_bytes(raw[:-1], "s", 3) == [b"a", b"b", b"c"]
