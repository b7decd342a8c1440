"""``ModelInferRequest`` to arrays and packed outputs to ``ModelInferResponse``: Triton's gRPC
tensors, as raw contents (little-endian bytes, BYTES length-prefixed, as the HTTP binary
extension: ``hub/v2/codec.py``) or typed contents (``InferTensorContents``).

Pure functions, no gRPC server, so that every malformed message can be tried directly. Every
problem is an ``InferhubError`` that says what to fix, of the kinds the HTTP codec uses.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from google.protobuf.message import DecodeError, Message

from contract.errors import InvalidInput, MalformedRequest
from contract.tensors import DTYPES, unpack_tensor
from hub.grpc.proto import grpc_service_pb2 as pb
from hub.v2.codec import from_raw, serialize_bytes
from hub.v2.unsupported import datatype_error, refuse_sequence

# The typed contents field of each datatype; FP16 has none: it travels raw only.
FIELDS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

# request parameters the protocol itself defines; the rest are the client's own
RESERVED_PARAMETERS = frozenset(
    {"priority", "timeout", "binary_data_output", "triton_enable_empty_final_response"}
)

M = TypeVar("M", bound=Message)

Inspect = Callable[[str, str, list[int]], None]
"""Refuses (by raising) an input's name, datatype and shape before its data is decoded."""


@dataclass(frozen=True)
class InferRequest:
    arrays: dict[str, np.ndarray]
    id: str
    raw: bool  # the inputs came as raw contents: the outputs go back so
    outputs: list[str] | None = None
    priority: int = 0  # Triton's: 0 the default, 1 the highest, 2 the next...
    timeout_us: int = 0  # 0: none given
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        first = next(iter(self.arrays.values()))
        return first.shape[0] if first.ndim else 1


def _unsupported(message: str) -> MalformedRequest:
    return MalformedRequest(message, "unsupported")


def _invalid(message: str) -> InvalidInput:
    return InvalidInput(message, "invalid_request")


def decode_message(kind: type[M], raw: bytes) -> M:
    """A request message from its bytes; bytes that are none are a malformed request."""
    try:
        return kind.FromString(raw)
    except DecodeError as exc:
        raise MalformedRequest(
            f"the message is not a valid {kind.DESCRIPTOR.full_name}: {exc}", "malformed_message"
        ) from None


def parameters_of(parameters: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    """A parameters map as plain values; a parameter with no value set is refused."""
    values: dict[str, Any] = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        if choice is None:
            raise _invalid(f"parameter '{key}' has no value")
        values[key] = getattr(parameter, choice)
    return values


def set_parameters(target: Any, values: Mapping[str, bool | int | float | str]) -> None:
    """Fill a parameters map (``target``) from plain values."""
    for key, value in values.items():
        parameter = target[key]
        if isinstance(value, bool):
            parameter.bool_param = value
        elif isinstance(value, int):
            parameter.int64_param = value
        elif isinstance(value, float):
            parameter.double_param = value
        else:
            parameter.string_param = value


def parse_request(request: pb.ModelInferRequest, inspect: Inspect | None = None) -> InferRequest:
    """The request's inputs as arrays and its options; ``inspect`` sees each input's name,
    datatype and shape before any data is decoded."""
    if not request.inputs:
        raise _invalid("the request has no inputs")
    parameters = parameters_of(request.parameters)
    refuse_sequence(parameters)
    raw_contents = request.raw_input_contents
    if raw_contents and len(raw_contents) != len(request.inputs):
        raise _invalid(
            f"raw_input_contents has {len(raw_contents)} entries for {len(request.inputs)} "
            "inputs: when it is used, it holds every input's data, in input order"
        )
    names: set[str] = set()
    for tensor in request.inputs:
        name = tensor.name
        if not name:
            raise _invalid("an input has no name")
        if name in names:
            raise InvalidInput(f"input '{name}' is given twice")
        names.add(name)
        if "shared_memory_region" in tensor.parameters:
            raise _unsupported(
                f"input '{name}': shared memory is not supported; send the data in the request"
            )
        if tensor.datatype not in DTYPES:
            raise datatype_error(name, tensor.datatype)
        if any(d < 0 for d in tensor.shape):
            raise InvalidInput(f"input '{name}': shape must be non-negative integers")
        if raw_contents and tensor.HasField("contents"):
            raise _invalid(
                f"input '{name}' has contents while raw_input_contents is used: "
                "send every input one way"
            )
        if inspect is not None:
            inspect(name, tensor.datatype, list(tensor.shape))

    arrays: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        shape = list(tensor.shape)
        if raw_contents:
            source = f"raw_input_contents[{i}] has"
            arrays[tensor.name] = from_raw(
                tensor.name, tensor.datatype, shape, raw_contents[i], source
            )
        else:
            arrays[tensor.name] = _from_contents(tensor, shape)

    return InferRequest(
        arrays=arrays,
        id=request.id,
        raw=bool(raw_contents),
        outputs=_outputs(request.outputs),
        priority=_count(parameters, "priority"),
        timeout_us=_count(parameters, "timeout"),
        parameters={k: v for k, v in parameters.items() if k not in RESERVED_PARAMETERS},
    )


def _from_contents(tensor: pb.ModelInferRequest.InferInputTensor, shape: list[int]) -> np.ndarray:
    name, datatype = tensor.name, tensor.datatype
    wanted = FIELDS.get(datatype)
    if wanted is None:
        raise InvalidInput(
            f"input '{name}': {datatype} has no typed contents field; send it in raw_input_contents"
        )
    contents = tensor.contents
    stray = [f.name for f, _ in contents.ListFields() if f.name != wanted]
    if stray:
        raise InvalidInput(f"input '{name}': {datatype} data goes in {wanted}, not {stray[0]}")
    values = getattr(contents, wanted)
    count = math.prod(shape)
    if len(values) != count:
        raise InvalidInput(
            f"input '{name}': shape {shape} needs {count} elements, {wanted} has {len(values)}"
        )
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    dtype = DTYPES[datatype]
    if dtype.kind in "iu" and dtype.itemsize < 4:  # carried in 32 bits: check the range
        wide = np.asarray(values, dtype=np.int64)
        limits = np.iinfo(dtype)
        if wide.size and (wide.min() < limits.min or wide.max() > limits.max):
            raise InvalidInput(
                f"input '{name}': {wanted} holds a value outside {datatype}'s range "
                f"[{limits.min}, {limits.max}]"
            )
        return wide.astype(dtype).reshape(shape)
    return np.asarray(values, dtype=dtype).reshape(shape)


def _outputs(
    requested: Any,  # a repeated field of InferRequestedOutputTensor
) -> list[str] | None:
    if not requested:
        return None
    names: list[str] = []
    for output in requested:
        name = output.name
        if not name:
            raise _invalid("a requested output has no name")
        if name in names:
            raise InvalidInput(f"output '{name}' is requested twice")
        if "classification" in output.parameters:
            raise _unsupported("the classification extension is not supported")
        if "shared_memory_region" in output.parameters:
            raise _unsupported(f"output '{name}': shared memory is not supported")
        names.append(name)
    return names


def _count(parameters: Mapping[str, Any], key: str) -> int:
    value = parameters.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _invalid(f"parameter '{key}' must be a non-negative integer, got {value!r}")
    return value


# --- responses -------------------------------------------------------------------------------


def response(
    model: str,
    version: str,
    request_id: str,
    packed_outputs: Sequence[Mapping[str, Any]] | None = None,
    *,
    raw: bool = True,
    parameters: Mapping[str, bool | int | float | str] | None = None,
) -> pb.ModelInferResponse:
    """The answer: outputs in raw_output_contents (as Triton answers), or as typed contents
    when ``raw`` is False and every output has a typed field (as MLServer answers a request
    that sent typed contents)."""
    answer = pb.ModelInferResponse(model_name=model, model_version=version, id=request_id)
    set_parameters(answer.parameters, parameters or {})
    outputs = packed_outputs or []
    typed = not raw and all(p["datatype"] in FIELDS for p in outputs)
    for packed in outputs:
        tensor = answer.outputs.add(
            name=packed["name"], datatype=packed["datatype"], shape=packed["shape"]
        )
        array = unpack_tensor(packed)
        if typed:
            getattr(tensor.contents, FIELDS[packed["datatype"]]).extend(array.reshape(-1).tolist())
        elif packed["datatype"] == "BYTES":
            answer.raw_output_contents.append(serialize_bytes(array))
        else:
            answer.raw_output_contents.append(bytes(packed["raw"]))  # already little-endian
    return answer
