"""Request bodies of the HTTP API, as pydantic models (they also make the OpenAPI document)."""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

from contract.events import JobStatus


class Tensor(BaseModel):
    """A KServe V2 tensor; ``data`` flat or nested, in row-major order."""

    model_config = ConfigDict(extra="forbid")
    name: str
    datatype: str | None = Field(None, description="V2 datatype; the model's when omitted")
    shape: list[int] | None = Field(None, description="taken from nested data when omitted")
    data: Any
    parameters: dict[str, Any] | None = None


class Webhook(BaseModel):
    """Where the job's events are pushed, signed (docs/protocol.md, "Webhooks")."""

    model_config = ConfigDict(extra="forbid")
    url: str = Field(
        max_length=2048,
        description="http(s) URL; its host must be allowed by INFERHUB_WEBHOOK_ALLOWED_HOSTS",
    )
    events: list[JobStatus] = Field(
        default_factory=lambda: [JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED],
        min_length=1,
        description="the statuses whose events are pushed; by default the terminal one",
    )


class JobRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"model": "iris", "data": [[5.1, 3.5, 1.4, 0.2]]},
                {
                    "model": "iris",
                    "inputs": [
                        {
                            "name": "input",
                            "datatype": "FP32",
                            "shape": [1, 4],
                            "data": [5.1, 3.5, 1.4, 0.2],
                        }
                    ],
                },
            ]
        },
    )
    model: str = Field(description="a model of the repository, see GET /v1/models")
    version: str | None = Field(None, description="the latest when omitted")
    inputs: list[Tensor] | None = Field(None, description="every input of the model")
    data: Any = Field(None, description="shorthand for a model with one input: its rows")
    outputs: list[str] | None = Field(None, description="the outputs wanted; all when omitted")
    priority: int = Field(0, ge=-100, le=100, description="higher runs sooner")
    stream_outputs: bool = Field(
        False,
        description="a bulk job sends an `output` event per chunk of rows, with the chunk's "
        "outputs (or their URL), while it runs",
    )
    parameters: dict[str, Any] | None = None
    webhook: Webhook | None = Field(None, description="push the job's events to a URL")
    lane: Literal["jobs", "online"] = Field(
        "jobs",
        description="`online`: answered at once, as `/v2 infer` is (batched with other "
        "requests), with no job kept: no id, events, webhook or Idempotency-Key",
    )

    @model_validator(mode="after")
    def one_form(self) -> JobRequest:
        if (self.inputs is None) == (self.data is None):
            raise ValueError("give either 'inputs' (V2 tensors) or 'data' (rows), not both")
        if self.lane == "online" and (self.webhook is not None or self.stream_outputs):
            raise ValueError(
                "'webhook' and 'stream_outputs' follow a job: the online lane keeps none; "
                "drop them or the lane"
            )
        return self

    @classmethod
    def openapi_body(cls, binary: dict[str, str] | None = None) -> dict[str, Any]:
        return request_body(cls, binary)

    def fingerprint(self) -> str:
        """What an Idempotency-Key is bound to: a repeat with another body is a conflict.
        Without ``lane``, always ``jobs`` here: keys stored before it existed still match."""
        doc = self.model_dump(mode="json", exclude={"lane"})
        body = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(body).hexdigest()[:32]


def inlined_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its definitions inlined, for a body or response declared
    outside the document's components (a route that reads its body itself)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return inline(defs[ref.removeprefix("#/$defs/")])
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return dict(inline(schema))


def request_body(model: type[BaseModel], binary: dict[str, str] | None = None) -> dict[str, Any]:
    """The request body for a route that reads it itself (after authenticating): the model's
    JSON schema, and each binary media type given with its description."""
    content: dict[str, Any] = {"application/json": {"schema": inlined_schema(model)}}
    for media, description in (binary or {}).items():
        content[media] = {
            "schema": {"type": "string", "format": "binary"},
            "description": description,
        }
    return {"required": True, "content": content}
