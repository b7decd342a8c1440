"""The records hub and workers exchange through Redis, typed in one place.

- ``JobRecord``: the job's hash (``keys.job``), written by the create script and by every step.
- ``JobArgs``: the arq job's keyword arguments, from the hub's submission to ``run_job``.
- ``CatalogueEntry``: a model as a worker's heartbeat describes it (``keys.MODELS``).
- ``WorkerRecord``: a worker's heartbeat (``keys.worker``).

``flatten`` and ``decode`` write a record as Redis holds it and read it back. ``step_fields`` is
the one definition of what an event changes in a job record: the worker
writes those fields with the event, and the hub brings a record it holds up to date with the
same function, so the two never disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NotRequired, TypedDict

from contract.events import EventType
from contract.wire import dumps, loads


class TensorSpec(TypedDict):
    name: str
    datatype: str
    shape: list[int]


class PackedTensor(TypedDict):
    """A tensor inside Redis: raw little-endian bytes (BYTES: a list of bytes) + type + shape."""

    name: str
    datatype: str
    shape: list[int]
    raw: bytes | list[bytes]


class Progress(TypedDict):
    done: int
    total: int


class JobRecord(TypedDict):
    id: str
    model: str
    version: str
    owner: str
    pool: str
    status: str  # a JobStatus value
    attempt: int
    created_at: float
    rows: int
    inputs: list[TensorSpec]
    parameters: dict[str, Any] | None
    fingerprint: str | None  # of the request, for its Idempotency-Key
    request_id: str | None
    started_at: NotRequired[float]
    finished_at: NotRequired[float]
    worker: NotRequired[str]
    done: NotRequired[int]  # rows done: the progress step's guard
    streamed: NotRequired[int]  # rows whose outputs were streamed: the output step's guard
    progress: NotRequired[Progress]
    outputs: NotRequired[list[PackedTensor]]  # when small; else:
    outputs_summary: NotRequired[list[dict[str, Any]]]  # contract/outputs.py
    outputs_bytes: NotRequired[int]
    outputs_url: NotRequired[str]
    error: NotRequired[str]
    # a webhook (hub/webhooks/): where, for which statuses (space-separated: what the job
    # scripts read), and how its deliveries went (the last attempt's HTTP status or error)
    webhook_url: NotRequired[str]
    webhook_on: NotRequired[str]
    webhook_attempts: NotRequired[int]
    webhook_status: NotRequired[int]
    webhook_error: NotRequired[str]
    webhook_delivered_at: NotRequired[float]


class JobArgs(TypedDict):
    model: str
    version: str
    owner: str
    inputs: list[PackedTensor]
    outputs: list[str] | None  # the outputs asked for; None: all
    request_id: str | None
    stream_outputs: NotRequired[bool]  # an `output` event per chunk
    traceparent: NotRequired[str]  # W3C: the trace of the request (contract/tracing.py)


class ModelVersionEntry(TypedDict):
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


class CatalogueEntry(TypedDict):
    """A model's ``config.toml`` fields (workers/repository.py ``ModelConfig``), its versions'
    signatures, and when a worker last described it."""

    name: str
    platform: str
    latest: str
    versions: dict[str, ModelVersionEntry]
    description: str
    pool: str
    max_batch_size: int
    timeout_s: float
    labels: list[str]
    features: NotRequired[list[str]]  # names of one row's values of the (first) input
    batching: dict[str, Any]
    onnxruntime: dict[str, Any]
    examples: NotRequired[list[dict[str, Any]]]  # examples.json: [{"name", "inputs"}]
    seen: NotRequired[float]


class WorkerRecord(TypedDict):
    id: str
    host: str
    pid: int
    pool: str
    models: list[str]
    errors: list[str]
    running: int
    done: int
    started_at: float
    seen: float
    figures: dict[str, Any]


def step_fields(event: EventType, data: Mapping[str, Any], ts: float) -> dict[str, Any]:
    """The record fields (beside ``status``) that an event of this type and data sets."""
    if event is EventType.STARTED:
        # an attempt counts its rows from 0: the guards of its progress and output steps
        fields = {"attempt": data["attempt"], "started_at": ts, "worker": data["worker"]}
        return {**fields, "done": 0, "streamed": 0}
    if event is EventType.PROGRESS:
        return {"progress": {"done": data["done"], "total": data["total"]}}
    if event in (EventType.SUCCEEDED, EventType.FAILED, EventType.CANCELED):
        kept = ("outputs", "outputs_summary", "outputs_bytes", "outputs_url", "error")
        return {"finished_at": ts, **{k: data[k] for k in kept if k in data}}
    return {}


# Record fields whose values are msgpack; the rest are text or numbers.
_PACKED = ("inputs", "outputs", "outputs_summary", "parameters", "progress")
_NUMBERS = ("created_at", "started_at", "finished_at", "webhook_delivered_at")
_INTEGERS = ("attempt", "rows", "done", "outputs_bytes", "webhook_attempts", "webhook_status")


def flatten(record: Mapping[str, Any]) -> list[Any]:
    """A record's fields as Redis takes them, flat (field, value, ...): packed where msgpack."""
    out: list[Any] = []
    for name, value in record.items():
        if value is None:
            continue
        out.append(name)
        out.append(dumps(value) if name in _PACKED else value)
    return out


def decode(raw: Mapping[bytes, bytes]) -> dict[str, Any]:
    """A record as Redis holds it (HGETALL), its fields typed again."""
    record: dict[str, Any] = {}
    for name_b, value in raw.items():
        name = name_b.decode()
        if name in _PACKED:
            record[name] = loads(value)
        elif name in _NUMBERS:
            record[name] = float(value)
        elif name in _INTEGERS:
            record[name] = int(value)
        else:
            record[name] = value.decode()
    return record
