"""A job's inputs checked against the model's signature, before anything is written."""

from __future__ import annotations

from typing import Any

import numpy as np

from hub.errors import invalid_input
from hub.protocol import ProtocolError, datatype_of, decode_tensor
from hub.schemas import JobRequest


def decode_inputs(
    model: dict[str, Any], version: str, request: JobRequest
) -> dict[str, np.ndarray]:
    """The request's V2 JSON inputs (or ``data`` rows) as arrays of the model's dtypes;
    ``check_arrays`` checks them."""
    signature = _inputs(model, version)
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
        if name not in signature:
            raise _unknown_input(model, name)
        if name in arrays:
            raise invalid_input(f"input '{name}' is given twice")
        try:
            array = decode_tensor(tensor, signature[name]["datatype"])
        except ProtocolError as exc:
            raise invalid_input(str(exc)) from None
        if request.data is not None:
            array = _add_batch_dim(array, signature[name]["shape"])
        arrays[name] = array
    return arrays


def check_arrays(
    model: dict[str, Any], version: str, arrays: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Names, datatypes, shapes and row counts as the model wants them, or a 422 that says how."""
    signature = _inputs(model, version)
    for name, array in arrays.items():
        spec = signature.get(name)
        if spec is None:
            raise _unknown_input(model, name)
        if datatype_of(array) != spec["datatype"]:
            raise invalid_input(
                f"input '{name}': datatype {datatype_of(array)} does not match the model's "
                f"{spec['datatype']}"
            )
        expected = spec["shape"]
        fits = array.ndim == len(expected) and all(
            e == -1 or e == a for e, a in zip(expected, array.shape, strict=True)
        )
        if not fits:
            raise invalid_input(
                f"input '{name}': shape {list(array.shape)} does not match the model's {expected} "
                "(-1 is any size)"
            )
    missing = [n for n in signature if n not in arrays]
    if missing:
        raise invalid_input(
            f"input '{missing[0]}' is missing; the model needs {', '.join(signature)}"
        )
    rows = {a.shape[0] if a.ndim else 1 for a in arrays.values()}
    if len(rows) > 1:
        raise invalid_input(f"inputs disagree on the number of rows: {sorted(rows)}")
    if rows == {0}:
        raise invalid_input("the request has no rows")
    return arrays


def check_outputs(model: dict[str, Any], version: str, wanted: list[str] | None) -> None:
    names = [o["name"] for o in model["versions"][version]["outputs"]]
    for name in wanted or []:
        if name not in names:
            raise invalid_input(
                f"model '{model['name']}' has no output '{name}'; its outputs are {', '.join(names)}"
            )


def _inputs(model: dict[str, Any], version: str) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in model["versions"][version]["inputs"]}


def _unknown_input(model: dict[str, Any], name: str) -> Exception:
    names = ", ".join(s["name"] for s in model["versions"][model["latest"]]["inputs"])
    return invalid_input(f"model '{model['name']}' has no input '{name}'; its inputs are {names}")


def _add_batch_dim(array: np.ndarray, expected: list[int]) -> np.ndarray:
    """``data`` may be a single row sent without its batch dimension."""
    if array.ndim == len(expected) - 1 and array.size:
        return array[np.newaxis]
    return array
