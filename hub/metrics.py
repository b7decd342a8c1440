"""Prometheus metrics of a hub replica, and of the whole deployment as Redis knows it.

Two scopes, told apart in ``docs/operations.md``:

- **this replica** (add them up across replicas): jobs submitted through it and how those
  jobs ended, their queue wait, run and end-to-end times, its HTTP requests, open SSE streams
  and WebSockets, and what its event fan-out received, delivered, coalesced and dropped.
  A job is counted by the replica that accepted it only: every replica sees every event
  through pub/sub, so counting what one sees would count each job once per replica.
- **the deployment** (the same on every replica; take one, e.g. ``max without (instance)``),
  read from Redis at scrape time: queue depth and oldest queued age per pool, live workers per
  pool, and each worker's own figures (jobs by model and outcome, onnxruntime call seconds and
  rows per call) that its heartbeat carries.

So one scrape of any replica gives the whole picture of the workers and queues, and the sum
over replicas gives the traffic.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from arq.constants import in_progress_key_prefix
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from redis.exceptions import RedisError
from starlette.types import Scope

from contract import keys, scripts
from contract.events import Event, EventType
from hub.catalogue import Catalogue
from hub.fanout import Fanout
from hub.observer import Observer

log = logging.getLogger(__name__)

disable_created_metrics()  # no ``*_created`` series next to every counter

JOB_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
)  # fmt: skip
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0)

TRACKED_MAX = 100_000
"""Jobs accepted here whose end is still awaited; beyond this the oldest are forgotten."""

QUEUE_SCAN = 1000
"""Queue entries looked at per pool and scrape to tell waiting jobs from running ones."""

QUEUE_STATS = scripts.load("queue_stats")


@dataclass
class _Tracked:
    model: str
    created: float
    started: float | None = None


@dataclass
class Snapshot:
    """What Redis said at scrape time."""

    at: float
    workers: list[dict[str, Any]] = field(default_factory=list)
    queues: dict[str, tuple[int, int, float | None]] = field(default_factory=dict)
    error: str | None = None


class Metrics(Observer):
    """The metrics of one hub app, in a registry of its own; the service and its fan-out feed
    them through the observer's hooks."""

    def __init__(self, open_streams: Callable[[str], int] | None = None) -> None:
        self.registry = r = CollectorRegistry()
        self._jobs: OrderedDict[str, _Tracked] = OrderedDict()
        self.fanout: Fanout | None = None
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
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes...
        self.cluster = _ClusterCollector()
        r.register(self.cluster)

    # --- jobs accepted here --------------------------------------------------------------------

    def job_creating(self, record: Mapping[str, Any]) -> None:
        self._jobs[record["id"]] = _Tracked(record["model"], float(record["created_at"]))
        while len(self._jobs) > TRACKED_MAX:
            self._jobs.popitem(last=False)

    def job_created(self, record: Mapping[str, Any], created: bool) -> None:
        if created:
            self.submitted.labels(record["model"]).inc()
        else:
            self._jobs.pop(record["id"], None)

    def events_delivered(self, count: int) -> None:
        self.delivered.inc(count)

    def events_coalesced(self, count: int) -> None:
        self.coalesced.inc(count)

    def events_dropped(self, count: int) -> None:
        self.dropped.inc(count)

    def subscription_gap(self) -> None:
        self.gaps.inc()

    def event_received(self, event: Event) -> None:
        self.published.labels(event.type.value).inc()
        tracked = self._jobs.get(event.job_id)
        if tracked is None:
            return
        if event.type is EventType.STARTED:
            if tracked.started is None:
                self.queue_wait.labels(tracked.model).observe(max(0.0, event.ts - tracked.created))
            tracked.started = event.ts
        elif event.terminal:
            del self._jobs[event.job_id]
            self.ended[event.type.value].labels(tracked.model).inc()
            self.end_to_end.labels(tracked.model).observe(max(0.0, event.ts - tracked.created))
            if tracked.started is not None:
                self.run.labels(tracked.model).observe(max(0.0, event.ts - tracked.started))

    # --- requests ------------------------------------------------------------------------------

    def request(self, scope: Scope, status: int, seconds: float) -> None:
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        method = scope.get("method", "WS")
        self.requests.labels(method, route, str(status)).inc()
        self.request_seconds.labels(method, route).observe(seconds)

    # --- the scrape ----------------------------------------------------------------------------

    async def render(self, catalogue: Catalogue) -> bytes:
        """The text exposition: this replica's metrics, then Redis's view read just now."""
        snapshot = await _snapshot(catalogue)
        self.cluster.snapshot = snapshot  # no await from here to the end: one scrape at a time
        return generate_latest(self.registry)


async def _snapshot(catalogue: Catalogue) -> Snapshot:
    snapshot = Snapshot(at=time.time())
    redis = catalogue.redis
    try:
        snapshot.workers = await catalogue.workers()
        pools = {w["pool"] for w in snapshot.workers if "pool" in w}
        pools.update(m.get("pool", "default") for m in (await catalogue.models()).values())
        for pool in sorted(pools):
            total, running, oldest = await QUEUE_STATS(
                redis,
                keys={"queue": keys.queue(pool)},
                args={
                    "in_progress_prefix": in_progress_key_prefix,
                    "job_prefix": keys.job(""),
                    "scan": QUEUE_SCAN,
                },
            )
            snapshot.queues[pool] = (int(total), int(running), float(oldest) if oldest else None)
    except (RedisError, OSError) as exc:
        snapshot.error = str(exc)
    return snapshot


class _ClusterCollector(Collector):
    """Yields the deployment's metrics from the snapshot taken for this scrape."""

    def __init__(self) -> None:
        self.snapshot: Snapshot | None = None

    def describe(self) -> list[Any]:
        return []  # its series depend on Redis: no collect() at registration

    def collect(self) -> Iterator[Any]:
        snap = self.snapshot
        up = GaugeMetricFamily(
            "inferhub_redis_up", "1 if this replica read the deployment's state from Redis."
        )
        up.add_metric([], 0 if snap is None or snap.error else 1)
        yield up
        if snap is None or snap.error:
            return
        yield from _queues(snap)
        yield from _workers(snap)


def _queues(snap: Snapshot) -> Iterator[Any]:
    depth = GaugeMetricFamily(
        "inferhub_queue_depth", "Jobs waiting in the pool's queue (not yet taken).", labels=["pool"]
    )
    running = GaugeMetricFamily(
        "inferhub_jobs_running", "Jobs of the pool a worker is running.", labels=["pool"]
    )
    oldest = GaugeMetricFamily(
        "inferhub_queue_oldest_age_seconds",
        "Age of the oldest job waiting in the pool's queue (0 when none waits).",
        labels=["pool"],
    )
    workers = GaugeMetricFamily("inferhub_workers", "Live workers of the pool.", labels=["pool"])
    alive: dict[str, int] = {}
    for w in snap.workers:
        if w.get("alive") and "pool" in w:
            alive[w["pool"]] = alive.get(w["pool"], 0) + 1
    for pool in sorted(set(snap.queues) | set(alive)):
        total, taken, created = snap.queues.get(pool, (0, 0, None))
        depth.add_metric([pool], max(0, total - taken))
        running.add_metric([pool], taken)
        oldest.add_metric([pool], max(0.0, snap.at - created) if created is not None else 0.0)
        workers.add_metric([pool], alive.get(pool, 0))
    yield from (depth, running, oldest, workers)


def _workers(snap: Snapshot) -> Iterator[Any]:
    labels = ["worker", "pool"]
    busy = GaugeMetricFamily(
        "inferhub_worker_running_jobs", "Jobs the worker is running.", labels=labels
    )
    age = GaugeMetricFamily(
        "inferhub_worker_heartbeat_age_seconds",
        "Seconds since the worker's last heartbeat (its figures are this old).",
        labels=labels,
    )
    broken = GaugeMetricFamily(
        "inferhub_worker_broken_models", "Models the worker could not load.", labels=labels
    )
    jobs = CounterMetricFamily(
        "inferhub_worker_jobs",
        "Jobs the worker ran to an end, by model and outcome.",
        labels=[*labels, "model", "status"],
    )
    seconds = HistogramMetricFamily(
        "inferhub_inference_seconds",
        "Seconds of one onnxruntime call (a batch), by model.",
        labels=[*labels, "model"],
    )
    rows = HistogramMetricFamily(
        "inferhub_batch_size_rows",
        "Rows in one onnxruntime call (the batch size), by model.",
        labels=[*labels, "model"],
    )
    for w in snap.workers:
        if not w.get("alive") or "pool" not in w:
            continue
        ids = [w["id"], w["pool"]]
        busy.add_metric(ids, w.get("running", 0))
        age.add_metric(ids, max(0.0, snap.at - w.get("seen", snap.at)))
        broken.add_metric(ids, len(w.get("errors") or ()))
        figures = w.get("figures") or {}
        for model, by_status in sorted(figures.get("jobs", {}).items()):
            for status, count in sorted(by_status.items()):
                jobs.add_metric([*ids, model, status], count)
        for family, name in ((seconds, "inference_seconds"), (rows, "batch_rows")):
            for model, hist in sorted(figures.get(name, {}).items()):
                buckets = [
                    (floatToGoString(le), count)
                    for le, count in zip(hist["le"], hist["counts"], strict=True)
                ]
                buckets.append(("+Inf", hist["count"]))
                family.add_metric([*ids, model], buckets, hist["sum"])
    yield from (busy, age, broken, jobs, seconds, rows)
