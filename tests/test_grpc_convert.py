"""Triton's gRPC tensors (hub/grpc/convert.py) as pure cases: raw and typed contents of every
datatype both ways, and a table of malformed requests, each with its error's kind, code,
message and the gRPC status a client gets (hub/grpc/errors.py). No hub, no Redis, no worker.
"""

from __future__ import annotations

import struct
from typing import Any

import grpc
import numpy as np
import pytest
from redis.exceptions import RedisError

from contract.errors import (
    InferhubError,
    InvalidInput,
    MalformedRequest,
    NotSupported,
    OverCapacity,
)
from contract.tensors import DTYPES, pack_tensor
from hub.grpc.convert import FIELDS, parse_request, response
from hub.grpc.errors import as_error, code_of, trailers
from hub.grpc.proto import grpc_service_pb2 as pb

Tensor = pb.ModelInferRequest.InferInputTensor
ROW = np.arange(4, dtype="<f4")


def request(*inputs: Tensor, raw: list[bytes] | None = None, **fields: Any) -> Any:
    return pb.ModelInferRequest(
        model_name="m", inputs=list(inputs), raw_input_contents=raw or [], **fields
    )


def fp32(**fields: Any) -> Tensor:
    return Tensor(**{"name": "x", "datatype": "FP32", "shape": [1, 4], **fields})


def typed(values: list[Any], datatype: str, shape: list[int], field: str | None = None) -> Tensor:
    contents = pb.InferTensorContents(**{field or FIELDS[datatype]: values})
    return Tensor(name="x", datatype=datatype, shape=shape, contents=contents)


def with_params(message: Any, **values: Any) -> Any:
    for key, value in values.items():
        parameter = message.parameters[key]
        if isinstance(value, bool):
            parameter.bool_param = value
        elif isinstance(value, int):
            parameter.int64_param = value
        else:
            parameter.string_param = value
    return message


SAMPLES: dict[str, np.ndarray] = {
    "BOOL": np.array([[True, False, True]]),
    "UINT8": np.array([[0, 7, 255]], "<u1"),
    "UINT16": np.array([[0, 7, 65535]], "<u2"),
    "UINT32": np.array([[0, 7, 2**32 - 1]], "<u4"),
    "UINT64": np.array([[0, 7, 2**64 - 1]], "<u8"),
    "INT8": np.array([[-128, 0, 127]], "<i1"),
    "INT16": np.array([[-32768, 0, 32767]], "<i2"),
    "INT32": np.array([[-(2**31), 0, 2**31 - 1]], "<i4"),
    "INT64": np.array([[-(2**63), 0, 2**63 - 1]], "<i8"),
    "FP16": np.array([[0.5, -1.0, 65504.0]], "<f2"),
    "FP32": np.array([[0.5, -1.0, 3.25]], "<f4"),
    "FP64": np.array([[0.5, -1.0, 1e300]], "<f8"),
    "BYTES": np.array([[b"", b"caf\xc3\xa9", b"\x00\xff"]], dtype=object),
}


@pytest.mark.parametrize("datatype", list(DTYPES))
def test_raw_contents_of_every_datatype_round_trip(datatype: str) -> None:
    array = SAMPLES[datatype]
    packed = pack_tensor("x", array)
    raw = response("m", "1", "r", [packed]).raw_output_contents[0]
    tensor = Tensor(name="x", datatype=datatype, shape=[1, 3])
    parsed = parse_request(request(tensor, raw=[raw]))
    assert parsed.raw and parsed.arrays["x"].dtype == array.dtype
    assert parsed.arrays["x"].tolist() == array.tolist()


@pytest.mark.parametrize("datatype", [d for d in DTYPES if d in FIELDS])
def test_typed_contents_of_every_datatype_round_trip(datatype: str) -> None:
    array = SAMPLES[datatype]
    answer = response("m", "1", "r", [pack_tensor("y", array)], raw=False)
    assert not answer.raw_output_contents
    values = list(getattr(answer.outputs[0].contents, FIELDS[datatype]))
    assert values == array.reshape(-1).tolist()
    parsed = parse_request(request(typed(values, datatype, [1, 3])))
    assert not parsed.raw and parsed.arrays["x"].dtype == array.dtype
    assert parsed.arrays["x"].tolist() == array.tolist()


def test_an_output_with_no_typed_field_sends_every_output_raw() -> None:
    outputs = [pack_tensor("a", SAMPLES["FP32"]), pack_tensor("b", SAMPLES["FP16"])]
    answer = response("m", "1", "r", outputs, raw=False)
    assert len(answer.raw_output_contents) == 2
    assert not answer.outputs[0].HasField("contents")


def test_options_and_the_clients_own_parameters() -> None:
    message = with_params(
        request(fp32(), raw=[ROW.tobytes()], id="r7"),
        priority=2,
        timeout=1500,
        triton_enable_empty_final_response=True,
        tag="mine",
    )
    message.outputs.add(name="label")
    parsed = parse_request(message)
    assert (parsed.id, parsed.priority, parsed.timeout_us) == ("r7", 2, 1500)
    assert parsed.outputs == ["label"] and parsed.parameters == {"tag": "mine"}
    assert parsed.rows == 1


def test_inspect_refuses_before_any_data_is_decoded() -> None:
    seen: list[tuple[str, str, list[int]]] = []

    def inspect(name: str, datatype: str, shape: list[int]) -> None:
        seen.append((name, datatype, shape))
        raise InvalidInput("no")

    # the raw contents are too short: inspect, called first, is what refuses
    with pytest.raises(InvalidInput, match="no"):
        parse_request(request(fp32(), raw=[b"\x00"]), inspect)
    assert seen == [("x", "FP32", [1, 4])]


def bytes_raw(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


BYTES3 = Tensor(name="s", datatype="BYTES", shape=[3])
NO_VALUE = pb.ModelInferRequest(model_name="m", inputs=[fp32()], raw_input_contents=[b"\0" * 16])
NO_VALUE.parameters["priority"].SetInParent()

# id: (message, kind, code, message fragment, gRPC status)
CASES: dict[str, tuple[Any, type[InferhubError], str, str, grpc.StatusCode]] = {
    "no inputs": (
        request(),
        InvalidInput,
        "invalid_request",
        "no inputs",
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "an input without a name": (
        request(fp32(name=""), raw=[ROW.tobytes()]),
        InvalidInput,
        "invalid_request",
        "an input has no name",
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "an input twice": (
        request(fp32(), fp32(), raw=[ROW.tobytes()] * 2),
        InvalidInput,
        "invalid_input",
        "input 'x' is given twice",
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "an unknown datatype": (
        request(fp32(datatype="FP8"), raw=[ROW.tobytes()]),
        InvalidInput,
        "invalid_input",
        "datatype 'FP8' is not one of",
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "a negative dimension": (
        request(fp32(shape=[-1, 4]), raw=[ROW.tobytes()]),
        InvalidInput,
        "invalid_input",
        "shape must be non-negative",
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "raw contents of the wrong size": (
        request(fp32(), raw=[ROW.tobytes()[:12]]),
        InvalidInput,
        "invalid_input",
        "FP32 [1, 4] needs 16 bytes, raw_input_contents[0] has 12",
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "fewer raw contents than inputs": (
        request(fp32(), fp32(name="z"), raw=[ROW.tobytes()]),
        InvalidInput,
        "invalid_request",
        "raw_input_contents has 1 entries for 2 inputs",
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "raw and typed contents at once": (
        request(typed(ROW.tolist(), "FP32", [1, 4]), raw=[ROW.tobytes()]),
        InvalidInput,
        "invalid_request",
        "send every input one way",
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "typed contents of the wrong count": (
        request(typed([1.0, 2.0], "FP32", [1, 4])),
        InvalidInput,
        "invalid_input",
        "shape [1, 4] needs 4 elements, fp32_contents has 2",
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "typed contents in the wrong field": (
        request(typed([1, 2, 3, 4], "FP32", [1, 4], "int_contents")),
        InvalidInput,
        "invalid_input",
        "FP32 data goes in fp32_contents, not int_contents",
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "typed FP16": (
        request(typed([1.0], "FP16", [1], "fp32_contents")),
        InvalidInput,
        "invalid_input",
        "FP16 has no typed contents field",
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "an INT8 out of range": (
        request(typed([1, 300], "INT8", [2])),
        InvalidInput,
        "invalid_input",
        "outside INT8's range [-128, 127]",
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "BYTES raw contents cut short": (
        request(BYTES3, raw=[bytes_raw([b"a", b"b"]) + b"\x05\x00"]),
        MalformedRequest,
        "malformed_binary",
        "a BYTES element length is cut short",
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "BYTES raw contents with too few elements": (
        request(BYTES3, raw=[bytes_raw([b"a", b"b"])]),
        InvalidInput,
        "invalid_input",
        "shape [3] needs 3 BYTES elements, the binary data has 2",
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "shared memory": (
        request(with_params(fp32(), shared_memory_region="r0"), raw=[ROW.tobytes()]),
        MalformedRequest,
        "unsupported",
        "shared memory is not supported",
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "a negative priority": (
        with_params(request(fp32(), raw=[ROW.tobytes()]), priority=-1),
        InvalidInput,
        "invalid_request",
        "parameter 'priority' must be a non-negative integer",
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "a parameter with no value": (
        NO_VALUE,
        InvalidInput,
        "invalid_request",
        "parameter 'priority' has no value",
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "an output twice": (
        request(fp32(), raw=[ROW.tobytes()], outputs=[{"name": "y"}, {"name": "y"}]),
        InvalidInput,
        "invalid_input",
        "output 'y' is requested twice",
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "classification": (
        request(
            fp32(),
            raw=[ROW.tobytes()],
            outputs=[
                with_params(
                    pb.ModelInferRequest.InferRequestedOutputTensor(name="y"), classification=3
                )
            ],
        ),
        MalformedRequest,
        "unsupported",
        "classification extension is not supported",
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_requests(case: str) -> None:
    message, kind, code, fragment, status = CASES[case]
    with pytest.raises(InferhubError) as caught:
        parse_request(message)
    error = caught.value
    assert type(error) is kind, error
    assert (error.code, fragment in error.message) == (code, True), error.message
    assert code_of(error) == status


def test_status_codes_as_triton_answers() -> None:
    assert code_of(NotSupported("x")) == grpc.StatusCode.UNIMPLEMENTED
    full = OverCapacity("queue full", headers={"Retry-After": "1"})
    assert code_of(full) == grpc.StatusCode.UNAVAILABLE
    assert trailers(full) == (("retry-after", "1"),) and trailers(NotSupported("x")) == ()
    assert code_of(as_error(RedisError("down"))) == grpc.StatusCode.UNAVAILABLE
    unexpected = as_error(ZeroDivisionError("boom"))
    assert code_of(unexpected) == grpc.StatusCode.INTERNAL and "boom" not in unexpected.message
