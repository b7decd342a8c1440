"""Traces across real processes: a hub and a worker export their spans over OTLP/HTTP to a
receiver in this test, which decodes them with opentelemetry-proto; the test then checks that
one request's spans, from both processes, share one trace and are parented as claimed
(docs/operations.md, "Traces")."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.grpc as tg
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from stack import Stack, Stacks
from websockets.sync.client import connect

from cli.processes import free_port
from contract import tracing
from hub.tracing import carried
from workers.tracing import traced_batch, traced_job

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
ROWS = [[5.1, 3.5, 1.4, 0.2]] * 300  # iris, more than one chunk: a job that says "started"


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_id: str  # "" for a root
    links: tuple[tuple[str, str], ...]  # (trace id, span id)
    attributes: dict[str, Any]
    start_ns: int
    end_ns: int


def _value(any_value: Any) -> Any:
    return getattr(any_value, any_value.WhichOneof("value"))


class Receiver:
    """An OTLP/HTTP trace receiver on loopback: it keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # the exporter's POST /v1/traces
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                receiver.take(ExportTraceServiceRequest.FromString(body))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def take(self, request: ExportTraceServiceRequest) -> None:
        got = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    got.append(
                        Span(
                            service=resource["service.name"],
                            name=span.name,
                            kind=span.kind,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            links=tuple((k.trace_id.hex(), k.span_id.hex()) for k in span.links),
                            attributes={a.key: _value(a.value) for a in span.attributes},
                            start_ns=span.start_time_unix_nano,
                            end_ns=span.end_time_unix_nano,
                        )
                    )
        with self.changed:
            self.spans.extend(got)
            self.changed.notify_all()

    def wait(self, found: Callable[[list[Span]], Any], what: str) -> Any:
        """What ``found`` returns once it returns something truthy for the spans received."""
        with self.changed:
            result = self.changed.wait_for(lambda: found(list(self.spans)), timeout=60)
        assert result, f"no {what} among {[(s.service, s.name) for s in self.spans]}"
        return result

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    yield made
    made.close()


@pytest.fixture(scope="module")
def stack(stacks: Stacks, receiver: Receiver) -> Iterator[Stack]:
    """A hub and a worker that export their spans to the receiver (the children inherit these
    variables; this process keeps tracing off)."""
    traced = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_BSP_SCHEDULE_DELAY": "50",  # ms: spans leave at once, not every 5 s
    }
    with pytest.MonkeyPatch.context() as env:
        for name, value in traced.items():
            env.setenv(name, value)
        made = stacks("tracing", workers=1)
        made.hub("hub", grpc_port=free_port())
    yield made
    made.close()


def trace_of(trace_id: str, wanted: set[tuple[str, str]]) -> Callable[[list[Span]], Any]:
    """Finds the spans of ``trace_id`` once every (service, name) of ``wanted`` is among them."""

    def found(spans: list[Span]) -> dict[str, Span] | None:
        mine = {s.name: s for s in spans if s.trace_id == trace_id}
        have = {(s.service, s.name) for s in mine.values()}
        return mine if wanted <= have else None

    return found


JOB_SPANS = {
    ("inferhub-hub", "POST /v1/jobs"),
    ("inferhub-worker", "queue wait"),
    ("inferhub-worker", "run iris"),
    ("inferhub-worker", "predict"),
    ("inferhub-worker", "succeeded event"),
}


def check_job_trace(spans: dict[str, Span], job_id: str) -> None:
    """The job's spans hang from the hub's request span, as workers/tracing.py says."""
    request = spans["POST /v1/jobs"]
    assert request.kind == ProtoSpan.SPAN_KIND_SERVER
    assert request.attributes["http.route"] == "/v1/jobs"
    assert request.attributes["inferhub.job_id"] == job_id
    run, wait = spans["run iris"], spans["queue wait"]
    assert run.kind == ProtoSpan.SPAN_KIND_CONSUMER
    assert run.parent_id == wait.parent_id == request.span_id
    assert run.attributes["inferhub.job_id"] == wait.attributes["inferhub.job_id"] == job_id
    assert wait.start_ns >= request.start_ns - 10**9  # enqueued within the request (±1 s clocks)
    assert spans["predict"].parent_id == spans["succeeded event"].parent_id == run.span_id
    assert spans["predict"].attributes["inferhub.rows"] == len(ROWS)


def test_a_job_continues_the_clients_trace(stack: Stack, receiver: Receiver) -> None:
    (hub,) = stack.hubs()
    r = httpx.post(
        f"{hub.url}/v1/jobs",
        json={"model": "iris", "data": ROWS},
        headers={"Prefer": "wait=30", "traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"},
        timeout=40,
    )
    assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text
    spans = receiver.wait(trace_of(CLIENT_TRACE, JOB_SPANS), "job trace")
    assert spans["POST /v1/jobs"].parent_id == CLIENT_SPAN
    check_job_trace(spans, r.json()["id"])


def test_a_request_without_a_trace_starts_one(stack: Stack, receiver: Receiver) -> None:
    (hub,) = stack.hubs()
    r = httpx.post(
        f"{hub.url}/v1/jobs",
        json={"model": "iris", "data": ROWS},
        headers={"Prefer": "wait=30"},
        timeout=40,
    )
    assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text
    job_id = r.json()["id"]

    def started(spans: list[Span]) -> str | None:
        roots = [
            s
            for s in spans
            if s.attributes.get("inferhub.job_id") == job_id and s.name == "POST /v1/jobs"
        ]
        return roots[0].trace_id if roots else None

    trace_id = receiver.wait(started, "hub span of the job")
    spans = receiver.wait(trace_of(trace_id, JOB_SPANS), "job trace")
    assert spans["POST /v1/jobs"].parent_id == ""  # the hub started the trace
    check_job_trace(spans, job_id)


def test_an_online_batch_links_the_trace_of_each_request(stack: Stack, receiver: Receiver) -> None:
    (hub,) = stack.hubs()
    name = httpx.get(f"{hub.url}/v2/models/iris").json()["inputs"][0]["name"]
    body = {"inputs": [{"name": name, "datatype": "FP32", "shape": [1, 4], "data": ROWS[0]}]}
    traces = [f"{i:032x}" for i in (0xA1, 0xA2, 0xA3)]
    with httpx.Client(base_url=hub.url, timeout=30) as http:
        for trace_id in traces:
            r = http.post(
                "/v2/models/iris/infer",
                json=body,
                headers={"traceparent": f"00-{trace_id}-{CLIENT_SPAN}-01"},
            )
            assert r.status_code == 200, r.text

    def linked(spans: list[Span]) -> dict[str, tuple[Span, Span]] | None:
        requests = {
            s.trace_id: s for s in spans if s.trace_id in traces and s.service == "inferhub-hub"
        }
        batches = [s for s in spans if s.name == "batch iris"]
        found = {}
        for trace_id, request in requests.items():
            for batch in batches:
                if (trace_id, request.span_id) in batch.links:
                    found[trace_id] = (request, batch)
        return found if len(found) == len(traces) else None

    found = receiver.wait(linked, "batch spans linked to every request")
    for request, batch in found.values():
        assert request.name == "POST /v2/models/{model}/infer"
        assert request.parent_id == CLIENT_SPAN
        assert batch.kind == ProtoSpan.SPAN_KIND_CONSUMER
        assert batch.service == "inferhub-worker"


def test_tracing_off_costs_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an OTLP endpoint (this process), nothing is installed: no span, no context,
    the job functions run unwrapped."""
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    assert not tracing.setup("test")
    assert not tracing.enabled()
    assert carried(job_id="x") == {}
    assert tracing.traceparent() is None
    with tracing.span("nothing") as span:
        assert span is None

    async def function(ctx: dict[str, Any], **kwargs: Any) -> None:
        return None

    assert traced_job(function) is function
    assert traced_batch(function) is function


def test_an_exporter_protocol_we_do_not_speak_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    with pytest.raises(ValueError, match="http/protobuf"):
        tracing.setup("test")
    assert not tracing.enabled()


def test_a_websocket_job_hangs_from_the_connections_span(stack: Stack, receiver: Receiver) -> None:
    (hub,) = stack.hubs()
    with connect(f"ws://127.0.0.1:{hub.port}/v1/ws") as ws:
        ws.send(
            orjson.dumps({"type": "submit", "ref": "a", "model": "iris", "data": ROWS}).decode()
        )
        while True:
            message = orjson.loads(ws.recv(timeout=30))
            assert message["type"] != "error", message
            if message["type"] == "event" and message["event"]["type"] == "succeeded":
                job_id = message["event"]["job_id"]
                break

    def run(spans: list[Span]) -> Span | None:
        runs = [s for s in spans if s.attributes.get("inferhub.job_id") == job_id]
        return next((s for s in runs if s.name == "run iris"), None)

    worker_run = receiver.wait(run, "the job's run span")
    connection = receiver.wait(
        lambda spans: next((s for s in spans if s.span_id == worker_run.parent_id), None),
        "the WebSocket's span",
    )
    assert connection.service == "inferhub-hub"
    assert connection.kind == ProtoSpan.SPAN_KIND_SERVER
    assert connection.attributes["inferhub.job_id"] == job_id


def test_a_grpc_request_starts_a_trace_of_its_own(stack: Stack, receiver: Receiver) -> None:
    """gRPC has no request span: the hub starts the trace with a span of the submission."""
    (hub,) = stack.hubs()
    grpc_port = int(hub.env["INFERHUB_GRPC_PORT"])
    with tg.InferenceServerClient(f"127.0.0.1:{grpc_port}") as triton:
        name = triton.get_model_metadata("iris").inputs[0].name
        tensor = tg.InferInput(name, [1, 4], "FP32")
        tensor.set_data_from_numpy(np.array(ROWS[:1], dtype=np.float32))
        triton.infer("iris", [tensor])

    def linked(spans: list[Span]) -> tuple[Span, Span] | None:
        submits = {(s.trace_id, s.span_id): s for s in spans if s.name == "submit"}
        for batch in (s for s in spans if s.name == "batch iris"):
            for link in batch.links:
                if link in submits:
                    return submits[link], batch
        return None

    submit, batch = receiver.wait(linked, "a batch linked to a gRPC submission")
    assert submit.service == "inferhub-hub" and submit.parent_id == ""
    assert submit.kind == ProtoSpan.SPAN_KIND_PRODUCER
    assert batch.service == "inferhub-worker"
