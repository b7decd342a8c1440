"""V2 infer's request and response in the OpenAPI document, as the Open Inference Protocol
writes them (``$inference_request``, ``$inference_response``), with examples.

The route reads its body itself (JSON, or Triton's binary form: ``codec``), so these models
only describe it: a generated client builds the JSON form from them. FastAPI puts in the
document's components only the models its routes parse; ``install`` adds the request's, so
that both infer paths share one ``InferRequest`` (a generated client has one class for it).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

from hub.v2.codec import HEADER_LENGTH

_DATA = "the elements, flat in row-major order or nested as the shape"
_BINARY = (
    f"Triton's binary tensor form: a JSON header of {HEADER_LENGTH} bytes, then each tensor's "
    "raw bytes (the default of tritonclient[http])"
)


class RequestInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    shape: list[int]
    datatype: str = Field(description="BOOL, UINT8..UINT64, INT8..INT64, FP16, FP32, FP64, BYTES")
    parameters: dict[str, Any] | None = Field(
        None, description='{"binary_data_size": n}: the data is in the binary part'
    )
    data: list[Any] | None = Field(None, description=_DATA)


class RequestOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    parameters: dict[str, Any] | None = Field(
        None, description='{"binary_data": bool, "classification": k}'
    )


class InferRequest(BaseModel):
    """``$inference_request``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "id": "1",
                    "inputs": [
                        {
                            "name": "input",
                            "shape": [1, 4],
                            "datatype": "FP32",
                            "data": [5.1, 3.5, 1.4, 0.2],
                        }
                    ],
                    "outputs": [{"name": "label"}],
                }
            ]
        },
    )
    id: str | None = None
    parameters: dict[str, Any] | None = Field(
        None,
        description="binary_data_output, priority (Triton's: 1 the highest), timeout "
        "(microseconds)",
    )
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = Field(None, description="all outputs when absent")


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = Field(None, description=_DATA + "; absent when binary")


class InferResponse(BaseModel):
    """``$inference_response``."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model_name": "iris",
                    "model_version": "1",
                    "id": "1",
                    "outputs": [{"name": "label", "shape": [1], "datatype": "INT64", "data": [0]}],
                }
            ]
        }
    )
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[ResponseOutput]


INFER_REQUEST: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": _BINARY,
            },
        },
    },
    "parameters": [
        {
            "name": HEADER_LENGTH,
            "in": "header",
            "required": False,
            "schema": {"type": "integer", "minimum": 0},
            "description": "with a binary body: the length of its JSON header",
        },
        {
            "name": "Content-Encoding",
            "in": "header",
            "required": False,
            "schema": {"type": "string", "enum": ["gzip", "deflate", "identity"]},
            "description": "the body's compression",
        },
    ],
}
"""The infer route's ``requestBody`` and the headers it reads itself."""

INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The outputs, as JSON or in Triton's binary form as asked",
        "model": InferResponse,  # in the document's components, by its name
        "content": {
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": _BINARY,
            },
        },
    }
}
"""The infer route's answer (its errors are the router's)."""


def install(app: FastAPI) -> None:
    """Add ``InferRequest`` (and the models it holds) to the app's OpenAPI components."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = build()
            schema = InferRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            components = document.setdefault("components", {}).setdefault("schemas", {})
            components.update(schema.pop("$defs", {}))
            components["InferRequest"] = schema
        return app.openapi_schema or build()

    app.openapi = openapi  # type: ignore[method-assign]
