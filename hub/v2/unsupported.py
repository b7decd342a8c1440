"""What the V2 protocol (HTTP and gRPC) can ask that inferhub does not do, refused with a 400
that says so, rather than ignored or answered with a generic message."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from contract.errors import InvalidInput, MalformedRequest
from contract.tensors import DTYPES

SEQUENCE_PARAMETERS = ("sequence_id", "sequence_start", "sequence_end")


def refuse_sequence(parameters: Mapping[str, Any]) -> None:
    """Triton's sequence batching (``sequence_id``, ``sequence_start``, ``sequence_end``)
    routes the requests of one sequence to one stateful model instance: inferhub's models are
    stateless and any worker may answer, so a request that asks for it is refused."""
    asked = sorted(k for k in parameters if k in SEQUENCE_PARAMETERS)
    if asked:
        raise MalformedRequest(
            f"parameters {', '.join(asked)} ask for sequence batching, which inferhub does not "
            "do: its models are stateless and any worker may answer; send each request alone",
            "unsupported",
        )


def datatype_error(name: str, datatype: Any) -> InvalidInput:
    """The error for an input whose datatype is not one inferhub carries."""
    if datatype == "BF16":
        return InvalidInput(
            f"input '{name}': BF16 is not supported (numpy and the onnxruntime models served "
            "here have no bfloat16); send FP32 (or FP16) as the model's metadata says"
        )
    return InvalidInput(f"input '{name}': datatype {datatype!r} is not one of {', '.join(DTYPES)}")
