"""``inferhub status``: the operator's view, from a hub's /metrics."""

from __future__ import annotations

import os
import time
from typing import Annotated, Any

import httpx
import typer
from rich.table import Table

from cli.common import Url, console

Samples = dict[str, list[tuple[dict[str, str], float]]]


def status(
    url: Url = "http://127.0.0.1:8000",
    interval: Annotated[float, typer.Option(help="seconds between the two scrapes (rates)")] = 5.0,
    watch: Annotated[bool, typer.Option(help="refresh every --interval until Ctrl-C")] = False,
) -> None:
    """Workers, pools, queue depths and rates, read from the hub's /metrics (with a key, send
    INFERHUB_METRICS_TOKEN or an admin INFERHUB_API_KEY)."""
    from rich.live import Live

    interval = max(0.2, interval)
    # a keyed hub shows /metrics to an admin key or to its metrics token
    token = os.environ.get("INFERHUB_METRICS_TOKEN") or os.environ.get("INFERHUB_API_KEY")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=url, timeout=10, headers=headers) as http:
        try:
            before, at = _scrape(http), time.monotonic()
            if not watch:
                time.sleep(interval)
                console.print(_status_view(url, before, _scrape(http), time.monotonic() - at))
                return
            with Live(console=console, auto_refresh=False) as live:
                while True:
                    time.sleep(interval)
                    now, after = time.monotonic(), _scrape(http)
                    live.update(_status_view(url, before, after, now - at), refresh=True)
                    before, at = after, now
        except httpx.HTTPError as exc:
            console.print(f"[red]cannot read {url}/metrics[/]: {exc}")
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            pass


def _scrape(http: httpx.Client) -> Samples:
    from prometheus_client.parser import text_string_to_metric_families

    response = http.get("/metrics")
    response.raise_for_status()
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def _by(samples: Samples, name: str, *labels: str) -> dict[tuple[str, ...], float]:
    """The sum of the samples of ``name``, by the values of ``labels``."""
    out: dict[tuple[str, ...], float] = {}
    for tags, value in samples.get(name, ()):
        key = tuple(tags.get(label, "") for label in labels)
        out[key] = out.get(key, 0.0) + value
    return out


def _rate(
    before: Samples, after: Samples, seconds: float, name: str, *labels: str
) -> dict[tuple[str, ...], float]:
    old = _by(before, name, *labels)  # a series new since then started from 0
    return {
        k: max(0.0, v - old.get(k, 0.0)) / seconds for k, v in _by(after, name, *labels).items()
    }


def _mean(after: Samples, before: Samples, name: str, *labels: str) -> dict[tuple[str, ...], float]:
    """Mean of a histogram over the interval (or since the start when nothing moved)."""
    sums, counts = _by(after, f"{name}_sum", *labels), _by(after, f"{name}_count", *labels)
    old_sums, old_counts = (
        _by(before, f"{name}_sum", *labels),
        _by(before, f"{name}_count", *labels),
    )
    out = {}
    for key, count in counts.items():
        delta = count - old_counts.get(key, 0.0)
        if delta > 0:
            out[key] = (sums[key] - old_sums.get(key, 0.0)) / delta
        elif count:
            out[key] = sums[key] / count
    return out


def _status_view(url: str, before: Samples, after: Samples, seconds: float) -> Any:
    from rich.console import Group

    one = lambda samples, name: sum(v for _, v in samples.get(name, ()))  # noqa: E731
    redis_up = one(after, "inferhub_redis_up") == 1
    events = sum(_rate(before, after, seconds, "inferhub_events_published_total").values())
    head = (
        f"[bold]{url}[/] redis {'[green]up[/]' if redis_up else '[red]unreachable[/]'}, "
        f"{one(after, 'inferhub_sse_connections'):.0f} SSE streams and "
        f"{one(after, 'inferhub_websocket_connections'):.0f} WebSockets on this hub, "
        f"{events:.1f} events/s"
    )

    done = _rate(before, after, seconds, "inferhub_worker_jobs_total", "worker", "pool", "status")
    pools = Table("pool", "workers", "queued", "running", "oldest queued", "jobs/s", title="pools")
    depth = _by(after, "inferhub_queue_depth", "pool")
    for (pool,), alive in sorted(_by(after, "inferhub_workers", "pool").items()):
        rate = sum(v for (_, p, _), v in done.items() if p == pool)
        pools.add_row(
            pool,
            f"{alive:.0f}" if alive else "[red]0[/]",
            f"{depth.get((pool,), 0):.0f}",
            f"{_by(after, 'inferhub_jobs_running', 'pool').get((pool,), 0):.0f}",
            f"{_by(after, 'inferhub_queue_oldest_age_seconds', 'pool').get((pool,), 0):.1f} s",
            f"{rate:.1f}",
        )

    workers = Table(
        "worker", "pool", "running", "jobs done", "jobs/s", "failed", "heartbeat", title="workers"
    )
    totals = _by(after, "inferhub_worker_jobs_total", "worker", "pool", "status")
    ages = _by(after, "inferhub_worker_heartbeat_age_seconds", "worker", "pool")
    for (worker_id, pool), running in sorted(
        _by(after, "inferhub_worker_running_jobs", "worker", "pool").items()
    ):
        mine = {s: v for (w, _, s), v in totals.items() if w == worker_id}
        workers.add_row(
            worker_id,
            pool,
            f"{running:.0f}",
            f"{sum(mine.values()):.0f}",
            f"{sum(v for (w, _, _), v in done.items() if w == worker_id):.1f}",
            f"{mine.get('failed', 0):.0f}",
            f"{ages.get((worker_id, pool), 0):.1f} s ago",
        )

    models = Table(
        "model",
        "succeeded/s",
        "failed/s",
        "canceled/s",
        "inference",
        "batch rows",
        title="models (all workers)",
    )
    by_model = _rate(before, after, seconds, "inferhub_worker_jobs_total", "model", "status")
    inference = _mean(after, before, "inferhub_inference_seconds", "model")
    rows = _mean(after, before, "inferhub_batch_size_rows", "model")
    for model in sorted({m for m, _ in by_model} | {m for (m,) in inference}):
        models.add_row(
            model,
            *(f"{by_model.get((model, s), 0):.1f}" for s in ("succeeded", "failed", "canceled")),
            f"{inference[(model,)] * 1000:.2f} ms" if (model,) in inference else "-",
            f"{rows[(model,)]:.1f}" if (model,) in rows else "-",
        )
    return Group(head, pools, workers, models)
