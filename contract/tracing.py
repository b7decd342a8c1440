"""Traces (OpenTelemetry): one trace per request, carried by its job from the hub to a worker.

Off unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set.
Then ``setup`` installs the SDK's tracer provider with a batch span processor and the OTLP
exporter over HTTP (protobuf), which read the standard ``OTEL_*`` variables themselves (headers,
timeout, sampler, service name, resource attributes, batch delay). Otherwise nothing is
installed, and every helper here returns at once: no span, no context, no exporter.

A trace context travels as a W3C ``traceparent`` string (``00-<trace id>-<span id>-<flags>``):
read from the incoming HTTP request, carried in the job's arguments (``JobArgs.traceparent``)
or the online request (``OnlineRequest.traceparent``), and made the parent of the worker's
spans. This module imports the OpenTelemetry API only; the SDK and the exporter are imported by
``setup``, when tracing is on.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, TypedDict

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_tracer: trace.Tracer | None = None  # set by setup() when tracing is on
_w3c = TraceContextTextMapPropagator()
_OFF: AbstractContextManager[None] = contextlib.nullcontext()  # reusable: no state

Attributes = Mapping[str, str | int | float | bool]


class Carried(TypedDict, total=False):
    """What a job's arguments or an online request carry of a trace (none when it is off)."""

    traceparent: str


def setup(service: str) -> bool:
    """Install the tracer provider if an OTLP endpoint is set (once per process); whether
    tracing is on. ``service`` names the process unless ``OTEL_SERVICE_NAME`` does."""
    global _tracer
    if _tracer is not None:
        return True
    env = os.environ
    if not (
        env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    ):
        return False
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    if protocol != "http/protobuf":
        raise ValueError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: inferhub exports traces over OTLP/HTTP; "
            "set it to 'http/protobuf' (a collector listens for it on port 4318)"
        )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    named = {} if env.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service}
    provider = TracerProvider(resource=Resource.create(named))
    # spans leave in batches from a thread of the SDK; what is left is sent at exit
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _tracer = provider.get_tracer("inferhub")
    return True


def enabled() -> bool:
    return _tracer is not None


def traceparent() -> str | None:
    """The current span as a W3C ``traceparent``; None when there is none (or tracing is off)."""
    if _tracer is None:
        return None
    carrier: dict[str, str] = {}
    _w3c.inject(carrier)
    return carrier.get("traceparent")


def context_of(headers: Mapping[str, str]) -> Context | None:
    """The remote parent named by ``traceparent`` (and ``tracestate``) in ``headers`` (lower
    case names); None when there is none or it is malformed: the span then starts a trace."""
    if "traceparent" not in headers:
        return None
    context = _w3c.extract(headers)
    return context if trace.get_current_span(context).get_span_context().is_valid else None


def _links(parents: Sequence[str | None]) -> list[trace.Link]:
    links = []
    for parent in parents:
        context = context_of({"traceparent": parent}) if parent else None
        if context is not None:
            links.append(trace.Link(trace.get_current_span(context).get_span_context()))
    return links


def span(
    name: str,
    *,
    kind: trace.SpanKind = trace.SpanKind.INTERNAL,
    parent: str | None = None,
    links: Sequence[str | None] = (),
    start_ns: int | None = None,
    attributes: Attributes | None = None,
) -> AbstractContextManager[trace.Span | None]:
    """A span, current inside the block, under the current one or under ``parent`` (a
    ``traceparent``), linked to ``links`` (traceparents); with tracing off, one shared empty
    context that yields None. An exception leaving the block is recorded on the span."""
    if _tracer is None:
        return _OFF
    context = context_of({"traceparent": parent}) if parent else None
    return _tracer.start_as_current_span(
        name,
        context=context,
        kind=kind,
        links=_links(links),
        start_time=start_ns,
        attributes=attributes,
    )


def past_span(
    name: str, start_ns: int, end_ns: int, *, parent: str | None, attributes: Attributes
) -> None:
    """A span that has already happened (a wait seen only once it is over), under ``parent``."""
    if _tracer is None:
        return
    context = context_of({"traceparent": parent}) if parent else None
    done = _tracer.start_span(
        name, context=context, start_time=start_ns, attributes=dict(attributes)
    )
    done.end(end_time=max(start_ns, end_ns))


def annotate(**attributes: Any) -> None:
    """Set attributes on the current span (the job id on the request's span), if any."""
    if _tracer is not None:
        trace.get_current_span().set_attributes(attributes)
