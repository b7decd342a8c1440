"""The worker's part of a trace: the job's wait in the queue, and its run.

``traced_job`` and ``traced_batch`` wrap the job functions when tracing is on in this process
(``contract.tracing``), and return them untouched when it is off, so that a worker without an
OTLP endpoint runs exactly the code it would without this module.

- A job (``run_job``): a span ``queue wait`` from the submission (arq's enqueue time, the hub's
  clock) to this attempt's start, then a CONSUMER span ``run <model>`` for the attempt; both are
  children of the ``traceparent`` the job carries. The runner adds ``predict`` (its rows through
  the model's batcher) and ``<status> event`` (the final transition) inside it.
- A batch of online requests (``run_batch``): one CONSUMER span ``batch <model>`` linked to each
  request's trace, since one batch serves requests of many traces.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

from opentelemetry.trace import SpanKind

from contract import tracing

JobFunction = Callable[..., Awaitable[Any]]


def traced_job(function: JobFunction) -> JobFunction:
    """``function`` (``run_job``) with the job's queue wait and run in the job's trace."""
    if not tracing.enabled():
        return function

    @functools.wraps(function)
    async def traced(ctx: dict[str, Any], **job: Any) -> Any:
        parent = job.get("traceparent")
        attributes = {
            "inferhub.job_id": ctx["job_id"],
            "inferhub.model": job["model"],
            "inferhub.attempt": ctx["job_try"],
        }
        _queue_wait(ctx, parent, attributes)
        with tracing.span(
            f"run {job['model']}", kind=SpanKind.CONSUMER, parent=parent, attributes=attributes
        ):
            return await function(ctx, **job)

    return traced


def traced_batch(function: JobFunction) -> JobFunction:
    """``function`` (``run_batch``) in a span linked to the trace of each of its requests."""
    if not tracing.enabled():
        return function

    @functools.wraps(function)
    async def traced(ctx: dict[str, Any], **batch: Any) -> Any:
        requests = batch["requests"]
        with tracing.span(
            f"batch {batch['model']}",
            kind=SpanKind.CONSUMER,
            links=[r.get("traceparent") for r in requests],
            attributes={"inferhub.model": batch["model"], "inferhub.requests": len(requests)},
        ):
            return await function(ctx, **batch)

    return traced


def _queue_wait(ctx: dict[str, Any], parent: str | None, attributes: dict[str, Any]) -> None:
    enqueued_ms = ctx.get("enqueued_ms")
    if enqueued_ms:
        now_ns = time.time_ns()
        tracing.past_span(
            "queue wait", enqueued_ms * 1_000_000, now_ns, parent=parent, attributes=attributes
        )
