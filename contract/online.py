"""The online lane's contract: a batch of requests sent by one hub, and the worker's one reply.

An online request has no record and no event log. The hub gathers requests of one model
version into a batch, queues the batch as one arq job (``RUN_BATCH``) naming the hub's reply
channel, and holds each request in memory until the reply comes. The worker answers the whole
batch in one publication: for each request its outputs, or its own error.
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

from arq.jobs import serialize_job

from contract.wire import dumps

RUN_BATCH = "run_batch"
"""The name of the arq function that runs one batch of online requests."""


class OnlineRequest(TypedDict):
    id: str  # the hub's key for the waiting request, unique within its batch's hub
    inputs: list[dict[str, Any]]  # packed tensors (contract.tensors.pack_tensor)
    outputs: list[str] | None  # the outputs asked for; None: all
    deadline: float  # unix time after which nobody waits for the answer
    traceparent: NotRequired[str]  # W3C: the request's trace, linked from the batch's span


class BatchArgs(TypedDict):
    """The arq job's keyword arguments."""

    model: str
    version: str
    reply: str  # the pub/sub channel of the hub that waits
    batch: str
    requests: list[OnlineRequest]


class Answer(TypedDict):
    id: str
    outputs: NotRequired[list[dict[str, Any]]]  # packed tensors, on success
    error: NotRequired[str]  # what went wrong, on failure
    status: NotRequired[int]  # the HTTP status the error maps to (500 when absent)


class Reply(TypedDict):
    batch: str
    answers: list[Answer]


def batch_payload(args: BatchArgs, enqueued_ms: int) -> bytes:
    """The arq job of a batch, in the job format the hub's durable lane writes too."""
    payload: bytes = serialize_job(RUN_BATCH, (), dict(args), None, enqueued_ms, serializer=dumps)
    return payload
