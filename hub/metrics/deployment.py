"""The deployment's series: a cluster snapshot, and the figures each worker's heartbeat carries,
as Prometheus metric families (the same on every replica; see docs/operations.md)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from hub.metrics.cluster import Snapshot


class DeploymentCollector(Collector):
    """Yields the families of one snapshot; a scrape makes one for the snapshot it read."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def describe(self) -> list[Any]:
        return []  # its series depend on Redis: no collect() at registration

    def collect(self) -> Iterator[Any]:
        snap = self.snapshot
        up = GaugeMetricFamily(
            "inferhub_redis_up", "1 if this replica read the deployment's state from Redis."
        )
        up.add_metric([], 0 if snap.error else 1)
        yield up
        if snap.error:
            return
        yield from _pools(snap)
        yield from _workers(snap)


def _pools(snap: Snapshot) -> Iterator[Any]:
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
    for pool in snap.pools:
        depth.add_metric([pool.pool], pool.depth)
        running.add_metric([pool.pool], pool.running)
        oldest.add_metric([pool.pool], pool.oldest_age_s)
        workers.add_metric([pool.pool], pool.workers)
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
