"""A job's request parsed and its inputs checked against the model's signature, before anything
is written; what a request declares (datatype, shape) is checked before its data is decoded."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from contract.errors import InvalidInput, MalformedRequest, TooLarge
from contract.tensors import DTYPES, datatype_of, decode_tensor
from hub.schemas import JobRequest

_NON_FINITE = "inputs must be finite numbers: JSON has no NaN or Infinity"


def parse_job_request(body: bytes, max_parameters_bytes: int) -> JobRequest:
    """A ``/v1/jobs`` body as a request: 400 if it is not JSON, 422 if it is not a request."""
    if not body.strip():
        raise RequestValidationError(
            [{"type": "missing", "loc": ("body",), "msg": "Field required"}]
        )
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if _non_finite(exc):
            raise InvalidInput(
                f"{_NON_FINITE} (at line {exc.lineno}, column {exc.colno})"
            ) from None
        raise MalformedRequest(f"the body is not valid JSON: {exc}", "malformed_json") from None
    try:
        request = JobRequest.model_validate(doc)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None
    check_parameters(request.parameters, max_parameters_bytes)
    return request


def _non_finite(exc: orjson.JSONDecodeError) -> bool:
    """Whether orjson stopped at NaN, Infinity, -Infinity or a number past a double's range."""
    if exc.msg.startswith("number is infinity"):
        return True
    return exc.doc[exc.pos : exc.pos + 8].startswith(("NaN", "Infinity"))


def check_parameters(parameters: dict[str, Any] | None, limit: int) -> None:
    """``parameters`` are stored with the job for its whole TTL: bound what they may hold."""
    if not parameters:
        return
    size = len(orjson.dumps(parameters))
    if size > limit:
        raise TooLarge(
            f"'parameters' take {size} bytes as JSON, over the {limit} allowed "
            "(INFERHUB_MAX_PARAMETERS_BYTES); send large values as inputs",
            "parameters_too_large",
        )


def decode_inputs(
    model: dict[str, Any], version: str, request: JobRequest
) -> dict[str, np.ndarray]:
    """The request's V2 JSON inputs (or ``data`` rows) as arrays of the model's dtypes;
    ``check_arrays`` checks them."""
    signature = _inputs(model, version)
    if request.data is not None:
        if len(signature) != 1:
            raise InvalidInput(
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
        if name in arrays:
            raise InvalidInput(f"input '{name}' is given twice")
        spec = _spec(model, signature, name)
        # what the tensor declares, checked before its data is decoded, which may be long
        check_tensor(spec, tensor.get("datatype", spec["datatype"]), tensor.get("shape"))
        array = decode_tensor(tensor, spec["datatype"])
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            at = int(np.flatnonzero(~np.isfinite(array))[0])
            raise InvalidInput(f"input '{name}': element {at} is NaN or infinite; {_NON_FINITE}")
        if request.data is not None:
            array = _add_batch_dim(array, spec["shape"])
        arrays[name] = array
    return arrays


def check_tensor(spec: dict[str, Any], datatype: str, shape: list[int] | None) -> None:
    """One input's datatype and (when known) shape against its ``spec`` in the signature."""
    name = spec["name"]
    if datatype not in DTYPES:
        raise InvalidInput(
            f"input '{name}': datatype {datatype!r} is not one of {', '.join(DTYPES)}"
        )
    if datatype != spec["datatype"]:
        raise InvalidInput(
            f"input '{name}': datatype {datatype} does not match the model's {spec['datatype']}"
        )
    expected = spec["shape"]
    if shape is None:
        return
    fits = len(shape) == len(expected)
    for e, a in zip(expected, shape, strict=False):  # a loop: a generator costs more per call
        if e != -1 and e != a:
            fits = False
    if not fits:
        raise InvalidInput(
            f"input '{name}': shape {list(shape)} does not match the model's {expected} "
            "(-1 is any size)"
        )


def check_declared(
    model: dict[str, Any], version: str, name: str, datatype: str, shape: list[int]
) -> None:
    """A tensor's name, datatype and shape as a request declares them, before its data."""
    check_tensor(_spec(model, _inputs(model, version), name), datatype, shape)


def check_arrays(
    model: dict[str, Any], version: str, arrays: dict[str, np.ndarray], *, declared: bool = False
) -> dict[str, np.ndarray]:
    """Names, datatypes, shapes and row counts as the model wants them, or a 422 that says how.
    ``declared``: each array was decoded as its tensor declared itself, and ``check_declared``
    passed on that declaration: only what no single tensor shows is left to check."""
    signature = _inputs(model, version)
    for name, array in arrays.items() if not declared else ():
        check_tensor(_spec(model, signature, name), datatype_of(array), list(array.shape))
    missing = [n for n in signature if n not in arrays]
    if missing:
        raise InvalidInput(
            f"input '{missing[0]}' is missing; the model needs {', '.join(signature)}"
        )
    rows = {a.shape[0] if a.ndim else 1 for a in arrays.values()}
    if len(rows) > 1:
        raise InvalidInput(f"inputs disagree on the number of rows: {sorted(rows)}")
    if rows == {0}:
        raise InvalidInput("the request has no rows")
    return arrays


def check_outputs(model: dict[str, Any], version: str, wanted: list[str] | None) -> None:
    if not wanted:  # all of them: nothing to look up
        return
    names = [o["name"] for o in model["versions"][version]["outputs"]]
    for name in wanted:
        if name not in names:
            raise InvalidInput(
                f"model '{model['name']}' has no output '{name}'; its outputs are {', '.join(names)}"
            )


def _inputs(model: dict[str, Any], version: str) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in model["versions"][version]["inputs"]}


def _spec(model: dict[str, Any], signature: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    spec = signature.get(name)
    if spec is None:
        names = ", ".join(signature)
        raise InvalidInput(f"model '{model['name']}' has no input '{name}'; its inputs are {names}")
    return spec


def _add_batch_dim(array: np.ndarray, expected: list[int]) -> np.ndarray:
    """``data`` may be a single row sent without its batch dimension."""
    if array.ndim == len(expected) - 1 and array.size:
        return array[np.newaxis]
    return array
