"""A job as ``/v1/jobs`` answers it (``hub/jobview.py``), described for the OpenAPI document:
the schema of ``POST /v1/jobs``'s 200 and 202 and of ``GET /v1/jobs/{id}``; and the answer of
``POST /v1/jobs`` on the online lane, which keeps no job."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from contract.events import JobStatus


class Progress(BaseModel):
    done: int
    total: int


class JobUrls(BaseModel):
    model_config = ConfigDict(extra="allow")
    self_: str = Field(alias="self")
    events: str
    cancel: str
    outputs: str | None = Field(None, description="once succeeded")


class OutputTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[Any]


class Job(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "id": "01JBX3V6N6Q2ZJ7M2W4K8T5R9A",
                    "model": "iris",
                    "version": "1",
                    "status": "succeeded",
                    "attempt": 1,
                    "rows": 1,
                    "created_at": 1765000000.0,
                    "started_at": 1765000000.01,
                    "finished_at": 1765000000.02,
                    "progress": None,
                    "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4]}],
                    "outputs": [{"name": "label", "datatype": "INT64", "shape": [1], "data": [0]}],
                    "error": None,
                    "urls": {
                        "self": "/v1/jobs/01JBX3V6N6Q2ZJ7M2W4K8T5R9A",
                        "events": "/v1/jobs/01JBX3V6N6Q2ZJ7M2W4K8T5R9A/events",
                        "cancel": "/v1/jobs/01JBX3V6N6Q2ZJ7M2W4K8T5R9A/cancel",
                        "outputs": "/v1/jobs/01JBX3V6N6Q2ZJ7M2W4K8T5R9A/outputs",
                    },
                }
            ]
        },
    )
    id: str
    model: str
    version: str
    status: JobStatus
    attempt: int = Field(description="the run of the job (1 the first; 0 while queued)")
    rows: int | None = None
    created_at: float = Field(description="unix seconds")
    started_at: float | None = None
    finished_at: float | None = None
    progress: Progress | None = None
    inputs: list[dict[str, Any]] | None = Field(None, description="the inputs' summaries")
    outputs: list[OutputTensor] | None = Field(
        None, description="V2 JSON tensors when small; else see outputs_summary and urls.outputs"
    )
    error: str | None = None
    urls: JobUrls
    outputs_summary: list[dict[str, Any]] | None = None
    outputs_bytes: int | None = None
    webhook: dict[str, Any] | None = None


class OnlineAnswer(BaseModel):
    """``POST /v1/jobs`` with ``"lane": "online"``: the outputs, as a finished job has them,
    and nothing to look up later."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "iris",
                    "version": "1",
                    "lane": "online",
                    "status": "succeeded",
                    "rows": 1,
                    "outputs": [{"name": "label", "datatype": "INT64", "shape": [1], "data": [0]}],
                }
            ]
        },
    )
    model: str
    version: str
    lane: Literal["online"]
    status: Literal["succeeded"]
    rows: int
    outputs: list[OutputTensor]
