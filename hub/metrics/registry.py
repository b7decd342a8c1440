"""The hub's Prometheus registry: this replica's metrics, fed by the observer's hooks.

Two scopes, told apart in ``docs/operations.md``:

- **this replica** (add them up across replicas): jobs submitted through it and how those
  jobs ended, their queue wait, run and end-to-end times, its HTTP requests, open SSE streams
  and WebSockets, and what its event fan-out received, delivered, coalesced and dropped.
  A job is counted by the replica that accepted it only: every replica sees every event
  through pub/sub, so counting what one sees would count each job once per replica.
- **the deployment** (the same on every replica; take one, e.g. ``max without (instance)``):
  a cluster snapshot read from Redis at scrape time (``hub/metrics/cluster.py``), turned into
  series by ``hub/metrics/deployment.py``.

So one scrape of any replica gives the whole picture of the workers and queues, and the sum
over replicas gives the traffic.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from starlette.types import Scope

from contract.events import Event, EventType
from hub.fanout import Fanout
from hub.metrics.cluster import Snapshot
from hub.metrics.deployment import DeploymentCollector
from hub.observer import Observer

disable_created_metrics()  # no ``*_created`` series next to every counter

JOB_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
)  # fmt: skip
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0)

TRACKED_MAX = 100_000
"""Jobs accepted here whose end is still awaited; beyond this the oldest are forgotten."""


@dataclass
class _Tracked:
    model: str
    created: float
    started: float | None = None


class Metrics(Observer):
    """The metrics of one hub app, in a registry of its own; the service and its fan-out feed
    them through the observer's hooks."""

    def __init__(self, open_streams: Callable[[str], int] | None = None) -> None:
        self.registry = r = CollectorRegistry()
        self._jobs: OrderedDict[str, _Tracked] = OrderedDict()
        self.fanout: Fanout | None = None
        # the labelled children, found once: ``labels()`` validates and locks on every call
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        job = ["model"]
        self.submitted = Counter(
            "inferhub_jobs_submitted", "Jobs accepted by this replica.", job, registry=r
        )
        self.ended = {
            status: Counter(
                f"inferhub_jobs_{status}",
                f"Jobs accepted by this replica that ended {status}.",
                job,
                registry=r,
            )
            for status in ("succeeded", "failed", "canceled")
        }
        self.queue_wait = Histogram(
            "inferhub_job_queue_wait_seconds",
            "From submission to the first start, for jobs accepted by this replica.",
            job,
            buckets=JOB_BUCKETS,
            registry=r,
        )
        self.run = Histogram(
            "inferhub_job_run_seconds",
            "From the (last) start to the end on a worker, for jobs accepted by this replica.",
            job,
            buckets=JOB_BUCKETS,
            registry=r,
        )
        self.end_to_end = Histogram(
            "inferhub_job_end_to_end_seconds",
            "From submission to the final event, for jobs accepted by this replica.",
            job,
            buckets=JOB_BUCKETS,
            registry=r,
        )
        Gauge(
            "inferhub_jobs_tracked",
            "Jobs accepted by this replica whose final event is still awaited.",
            registry=r,
        ).set_function(lambda: len(self._jobs))
        self.published = Counter(
            "inferhub_events_published",
            "Job events published on Redis, as this replica's subscription received them.",
            ["type"],
            registry=r,
        )
        self.delivered = Counter(
            "inferhub_events_delivered",
            "Events handed to a local consumer (SSE stream, WebSocket, waiting request).",
            registry=r,
        )
        self.coalesced = Counter(
            "inferhub_events_coalesced",
            "Progress events replaced by a newer one in a slow consumer's full buffer.",
            registry=r,
        )
        self.dropped = Counter(
            "inferhub_events_dropped",
            "Events left undelivered when a stuck consumer was disconnected (it resumes by id).",
            registry=r,
        )
        self.gaps = Counter(
            "inferhub_event_subscription_gaps",
            "Reconnections of the event subscription (events in between are re-read from logs).",
            registry=r,
        )
        Gauge(
            "inferhub_event_subscription_up",
            "1 while this replica's Redis event subscription is connected.",
            registry=r,
        ).set_function(lambda: 1 if self.fanout is not None and self.fanout.connected else 0)
        if open_streams is not None:
            Gauge(
                "inferhub_sse_connections", "Open SSE streams on this replica.", registry=r
            ).set_function(lambda: open_streams("sse"))
            Gauge(
                "inferhub_websocket_connections", "Open WebSockets on this replica.", registry=r
            ).set_function(lambda: open_streams("websocket"))
        self.requests = Counter(
            "inferhub_http_requests",
            "HTTP requests and WebSockets served by this replica, by route template.",
            ["method", "route", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "inferhub_http_request_duration_seconds",
            "Time to serve a request (a stream: its whole life), by route template.",
            ["method", "route"],
            buckets=HTTP_BUCKETS,
            registry=r,
        )
        model = ["model"]
        self.online_requests = Counter(
            "inferhub_online_requests",
            "Online (/v2 infer) requests this replica ended, by outcome: succeeded, failed, "
            "timeout, refused (over INFERHUB_ONLINE_MAX_ROWS).",
            ["model", "outcome"],
            registry=r,
        )
        self.online_rows = Counter(
            "inferhub_online_rows",
            "Rows of the online requests that succeeded on this replica.",
            model,
            registry=r,
        )
        self.online_seconds = Histogram(
            "inferhub_online_request_seconds",
            "From an online request joining its line to its answer, on this replica.",
            model,
            buckets=JOB_BUCKETS,
            registry=r,
        )
        self.online_batches = Counter(
            "inferhub_online_batches",
            "Batches of online requests this replica sent to the workers.",
            model,
            registry=r,
        )
        self.online_batch_requests = Counter(
            "inferhub_online_batched_requests",
            "Requests in those batches (divided by the batches: the mean batch).",
            model,
            registry=r,
        )
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes...

    def _child(self, metric: Any, *values: str) -> Any:
        """``metric.labels(*values)``, cached: the label values are bounded (models, routes,
        statuses, outcomes, event types) and no child is ever removed."""
        key = (metric, values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    # --- jobs accepted here --------------------------------------------------------------------

    def job_creating(self, record: Mapping[str, Any]) -> None:
        self._jobs[record["id"]] = _Tracked(record["model"], float(record["created_at"]))
        while len(self._jobs) > TRACKED_MAX:
            self._jobs.popitem(last=False)

    def job_created(self, record: Mapping[str, Any], created: bool) -> None:
        if created:
            self._child(self.submitted, record["model"]).inc()
        else:
            self._jobs.pop(record["id"], None)

    # --- online requests -------------------------------------------------------------------------

    def online_batch(self, model: str, requests: int, rows: int) -> None:
        self._child(self.online_batches, model).inc()
        self._child(self.online_batch_requests, model).inc(requests)

    def online_answered(self, model: str, rows: int, seconds: float, outcome: str) -> None:
        self._child(self.online_requests, model, outcome).inc()
        if outcome == "succeeded":
            self._child(self.online_rows, model).inc(rows)
        if outcome != "refused":
            self._child(self.online_seconds, model).observe(seconds)

    def online_totals(self) -> dict[str, dict[str, float]]:
        """Per model, this replica's online counters as they stand: requests by outcome,
        ``rows``, ``batches`` and ``batched_requests`` (for the WebSocket's stats message)."""
        totals: dict[str, dict[str, float]] = {}
        for metric in (
            self.online_requests,
            self.online_rows,
            self.online_batches,
            self.online_batch_requests,
        ):
            for family in metric.collect():
                name = family.name.removeprefix("inferhub_online_")
                for sample in family.samples:
                    if sample.name.endswith("_total"):
                        key = sample.labels.get("outcome", name)
                        totals.setdefault(sample.labels["model"], {})[key] = sample.value
        return totals

    def events_delivered(self, count: int) -> None:
        self.delivered.inc(count)

    def events_coalesced(self, count: int) -> None:
        self.coalesced.inc(count)

    def events_dropped(self, count: int) -> None:
        self.dropped.inc(count)

    def subscription_gap(self) -> None:
        self.gaps.inc()

    def event_received(self, event: Event) -> None:
        self._child(self.published, event.type.value).inc()
        tracked = self._jobs.get(event.job_id)
        if tracked is None:
            return
        if event.type is EventType.STARTED:
            if tracked.started is None:
                self._child(self.queue_wait, tracked.model).observe(
                    max(0.0, event.ts - tracked.created)
                )
            tracked.started = event.ts
        elif event.terminal:
            del self._jobs[event.job_id]
            self._child(self.ended[event.type.value], tracked.model).inc()
            self._child(self.end_to_end, tracked.model).observe(
                max(0.0, event.ts - tracked.created)
            )
            if tracked.started is not None:
                self._child(self.run, tracked.model).observe(max(0.0, event.ts - tracked.started))

    # --- requests ------------------------------------------------------------------------------

    def request(self, scope: Scope, status: int, seconds: float) -> None:
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        method = scope.get("method", "WS")
        self._child(self.requests, method, route, str(status)).inc()
        self._child(self.request_seconds, method, route).observe(seconds)

    # --- the scrape ----------------------------------------------------------------------------

    def render(self, snapshot: Snapshot) -> bytes:
        """The text exposition: this replica's metrics, then the deployment's in ``snapshot``
        (a registry per scrape, so that concurrent scrapes never share a snapshot)."""
        deployment = CollectorRegistry(auto_describe=False)
        deployment.register(DeploymentCollector(snapshot))
        return generate_latest(self.registry) + generate_latest(deployment)
