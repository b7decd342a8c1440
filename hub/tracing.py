"""The hub's part of a trace: a span per HTTP request and WebSocket, and the context a job or
an online request carries away to the workers.

The request spans are FastAPI's own (its native OpenTelemetry support, which wakes up once a
tracer provider is installed): a SERVER span named by the route template, the child of the
request's ``traceparent`` when it has one. ``start`` installs the provider when an OTLP endpoint
is set (``contract.tracing``) and gives FastAPI its settings. With tracing off FastAPI skips its
telemetry, and ``carried`` returns an empty mapping: requests pay nothing.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from fastapi.telemetry import TelemetryConfig
from opentelemetry.trace import SpanKind

from contract import tracing
from hub.middleware.request_log import QUIET_PATHS


def start() -> TelemetryConfig:
    """Turn tracing on in this hub process if an OTLP endpoint is set; FastAPI's telemetry
    settings: probes and scrapes make no spans, and a request is one span (no spans of
    FastAPI's inner steps), under which its jobs' spans hang. Off, FastAPI's telemetry is
    switched off here once: else it would look up three global providers per request."""
    if not tracing.setup("inferhub-hub"):
        return {"tracing": False, "metrics": False, "logs": False}
    return {"operation_spans": False, "exclude": _quiet}


def _quiet(scope: MutableMapping[str, Any]) -> bool:
    return scope.get("path") in QUIET_PATHS


def carried(**attributes: Any) -> tracing.Carried:
    """What a job or an online request takes along of the current trace: ``{"traceparent":
    ...}``; ``attributes`` (the job id) go on the current span. Where no request span is
    current (gRPC), a span of its own starts the trace. Empty when tracing is off."""
    if not tracing.enabled():
        return {}
    tracing.annotate(**attributes)
    if (parent := tracing.traceparent()) is not None:
        return {"traceparent": parent}
    with tracing.span("submit", kind=SpanKind.PRODUCER, attributes=attributes):
        return {"traceparent": tracing.traceparent() or ""}
