"""A job request checked against the model's signature, before anything is written."""

from __future__ import annotations

from typing import Any

import numpy as np

from hub.errors import invalid_input
from hub.protocol import DTYPES, ProtocolError, decode_tensor
from hub.schemas import JobRequest


def check_inputs(model: dict[str, Any], version: str, request: JobRequest) -> dict[str, np.ndarray]:
    """The request's inputs as arrays of the model's dtypes, or a 422 naming what is wrong."""
    signature = {s["name"]: s for s in model["versions"][version]["inputs"]}
    if request.data is not None:
        if len(signature) != 1:
            raise invalid_input(
                f"model '{model['name']}' has {len(signature)} inputs "
                f"({', '.join(signature)}): send them as 'inputs'"
            )
        (name,) = signature
        tensors = [{"name": name, "data": request.data}]
    else:
        tensors = [t.model_dump(exclude_none=True) for t in request.inputs or []]

    arrays: dict[str, np.ndarray] = {}
    for tensor in tensors:
        name = tensor["name"]
        spec = signature.get(name)
        if spec is None:
            raise invalid_input(
                f"model '{model['name']}' has no input '{name}'; its inputs are {', '.join(signature)}"
            )
        if name in arrays:
            raise invalid_input(f"input '{name}' is given twice")
        if tensor.get("datatype", spec["datatype"]) != spec["datatype"]:
            raise invalid_input(
                f"input '{name}': datatype {tensor['datatype']} does not match the model's "
                f"{spec['datatype']}"
            )
        try:
            array = decode_tensor(tensor, spec["datatype"])
        except ProtocolError as exc:
            raise invalid_input(str(exc)) from None
        arrays[name] = _fit_shape(name, array, spec["shape"])

    missing = [n for n in signature if n not in arrays]
    if missing:
        raise invalid_input(
            f"input '{missing[0]}' is missing; the model needs {', '.join(signature)}"
        )
    rows = {a.shape[0] for a in arrays.values()}
    if len(rows) > 1:
        raise invalid_input(f"inputs disagree on the number of rows: {sorted(rows)}")
    if rows == {0}:
        raise invalid_input("the request has no rows")
    return arrays


def _fit_shape(name: str, array: np.ndarray, expected: list[int]) -> np.ndarray:
    if array.ndim == len(expected) - 1 and array.size:
        array = array[np.newaxis]  # a single row sent without its batch dimension
    fits = array.ndim == len(expected) and all(
        e == -1 or e == a for e, a in zip(expected, array.shape, strict=True)
    )
    if not fits:
        raise invalid_input(
            f"input '{name}': shape {list(array.shape)} does not match the model's {expected} "
            "(-1 is any size)"
        )
    if array.dtype != DTYPES["BYTES"] and not array.flags.c_contiguous:
        array = np.ascontiguousarray(array)
    return array


def check_outputs(model: dict[str, Any], version: str, wanted: list[str] | None) -> None:
    names = [o["name"] for o in model["versions"][version]["outputs"]]
    for name in wanted or []:
        if name not in names:
            raise invalid_input(
                f"model '{model['name']}' has no output '{name}'; its outputs are {', '.join(names)}"
            )
