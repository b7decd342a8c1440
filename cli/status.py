"""``inferhub status``: the operator's view, from a hub's /metrics."""

from __future__ import annotations

import os
import time
from typing import Annotated, Any

import httpx
import typer

from cli.common import Json, Url, console, print_json, table

Samples = dict[str, list[tuple[dict[str, str], float]]]


def status(
    url: Url = "http://127.0.0.1:8000",
    interval: Annotated[
        float, typer.Option(metavar="SECONDS", help="seconds between two scrapes (rates)")
    ] = 2.0,
    watch: Annotated[
        bool, typer.Option("--watch", help="refresh every --interval until Ctrl-C")
    ] = False,
    json: Json = False,
) -> None:
    """Workers, pools, queues and rates, from /metrics.

    The first frame shows at once, the rates after --interval. With a key, send
    INFERHUB_METRICS_TOKEN or an admin INFERHUB_API_KEY."""
    from rich.live import Live

    interval = max(0.2, interval)
    # a keyed hub shows /metrics to an admin key or to its metrics token
    token = os.environ.get("INFERHUB_METRICS_TOKEN") or os.environ.get("INFERHUB_API_KEY")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=url, timeout=10, headers=headers) as http:
        try:
            before, at = _scrape(http), time.monotonic()
            if json:
                time.sleep(interval)
                print_json(snapshot(before, _scrape(http), time.monotonic() - at))
                return
            with Live(console=console, auto_refresh=False) as live:
                live.update(_status_view(url, snapshot(None, before, 0.0)), refresh=True)
                while True:
                    time.sleep(interval)
                    now, after = time.monotonic(), _scrape(http)
                    live.update(_status_view(url, snapshot(before, after, now - at)), refresh=True)
                    if not watch:
                        return
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


def _mean(
    before: Samples | None, after: Samples, name: str, *labels: str
) -> dict[tuple[str, ...], float]:
    """Mean of a histogram over the interval (or since the start when nothing moved)."""
    sums, counts = _by(after, f"{name}_sum", *labels), _by(after, f"{name}_count", *labels)
    old_sums = _by(before, f"{name}_sum", *labels) if before else {}
    old_counts = _by(before, f"{name}_count", *labels) if before else {}
    out = {}
    for key, count in counts.items():
        delta = count - old_counts.get(key, 0.0)
        if delta > 0:
            out[key] = (sums[key] - old_sums.get(key, 0.0)) / delta
        elif count:
            out[key] = sums[key] / count
    return out


def snapshot(before: Samples | None, after: Samples, seconds: float) -> dict[str, Any]:
    """What ``inferhub status`` shows (``--json`` prints it): ``after``'s figures, and the
    rates since ``before`` (None when there is no ``before`` yet)."""
    one = lambda name: sum(v for _, v in after.get(name, ()))  # noqa: E731

    def rate(name: str, labels: tuple[str, ...] = (), key: tuple[str, ...] = ()) -> float | None:
        """Per second since ``before``, summed over the series whose labels are ``key``."""
        if before is None:
            return None
        rates = _rate(before, after, seconds, name, *labels)
        return sum(v for k, v in rates.items() if not key or k == key)

    jobs_total = "inferhub_worker_jobs_total"
    depth = _by(after, "inferhub_queue_depth", "pool")
    running = _by(after, "inferhub_jobs_running", "pool")
    oldest = _by(after, "inferhub_queue_oldest_age_seconds", "pool")
    pools = [
        {
            "pool": pool,
            "workers": int(alive),
            "queued": int(depth.get((pool,), 0)),
            "running": int(running.get((pool,), 0)),
            "oldest_queued_s": oldest.get((pool,), 0.0),
            "jobs_per_s": rate(jobs_total, ("pool",), (pool,)),
        }
        for (pool,), alive in sorted(_by(after, "inferhub_workers", "pool").items())
    ]
    totals = _by(after, jobs_total, "worker", "status")
    ages = _by(after, "inferhub_worker_heartbeat_age_seconds", "worker", "pool")
    workers = [
        {
            "worker": worker_id,
            "pool": pool,
            "running": int(busy),
            "jobs_done": int(sum(v for (w, _), v in totals.items() if w == worker_id)),
            "jobs_per_s": rate(jobs_total, ("worker",), (worker_id,)),
            "failed": int(totals.get((worker_id, "failed"), 0)),
            "heartbeat_age_s": ages.get((worker_id, pool), 0.0),
        }
        for (worker_id, pool), busy in sorted(
            _by(after, "inferhub_worker_running_jobs", "worker", "pool").items()
        )
    ]
    inference = _mean(before, after, "inferhub_inference_seconds", "model")
    rows = _mean(before, after, "inferhub_batch_size_rows", "model")
    names = {m for m, _ in _by(after, jobs_total, "model", "status")} | {m for (m,) in inference}
    models = [
        {
            "model": model,
            **{
                f"{s}_per_s": rate(jobs_total, ("model", "status"), (model, s))
                for s in ("succeeded", "failed", "canceled")
            },
            "inference_ms": inference[(model,)] * 1000 if (model,) in inference else None,
            "batch_rows": rows.get((model,)),
        }
        for model in sorted(names)
    ]
    return {
        "redis_up": one("inferhub_redis_up") == 1,
        "sse_streams": int(one("inferhub_sse_connections")),
        "websockets": int(one("inferhub_websocket_connections")),
        "events_per_s": rate("inferhub_events_published_total"),
        "interval_s": seconds if before is not None else None,
        "pools": pools,
        "workers": workers,
        "models": models,
    }


def _per_s(value: float | None) -> str:
    return "…" if value is None else f"{value:.1f}"


def _status_view(url: str, view: dict[str, Any]) -> Any:
    from rich.console import Group

    head = (
        f"[bold]{url}[/] redis {'[green]up[/]' if view['redis_up'] else '[red]unreachable[/]'}, "
        f"{view['sse_streams']} SSE streams and {view['websockets']} WebSockets on this hub, "
        f"{_per_s(view['events_per_s'])} events/s"
    )
    if view["interval_s"] is None:
        head += " [dim](rates: … until the next scrape)[/]"
    pools = table("pool", "workers", "queued", "running", "oldest queued", "jobs/s", title="pools")
    for p in view["pools"]:
        pools.add_row(
            p["pool"],
            str(p["workers"]) if p["workers"] else "[red]0[/]",
            str(p["queued"]),
            str(p["running"]),
            f"{p['oldest_queued_s']:.1f} s",
            _per_s(p["jobs_per_s"]),
        )
    workers = table(
        "worker", "pool", "running", "done", "jobs/s", "failed", "heartbeat", title="workers"
    )
    workers.columns[0].no_wrap = True
    for w in view["workers"]:
        workers.add_row(
            w["worker"],
            w["pool"],
            str(w["running"]),
            str(w["jobs_done"]),
            _per_s(w["jobs_per_s"]),
            str(w["failed"]),
            f"{w['heartbeat_age_s']:.1f} s ago",
        )
    models = table(
        "model",
        "succeeded/s",
        "failed/s",
        "canceled/s",
        "inference",
        "batch rows",
        title="models (all workers)",
    )
    for m in view["models"]:
        models.add_row(
            m["model"],
            *(_per_s(m[f"{s}_per_s"]) for s in ("succeeded", "failed", "canceled")),
            "-" if m["inference_ms"] is None else f"{m['inference_ms']:.2f} ms",
            "-" if m["batch_rows"] is None else f"{m['batch_rows']:.1f}",
        )
    return Group(head, pools, workers, models)
