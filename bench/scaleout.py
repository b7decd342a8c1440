"""Scale-out, measured: one hub and one worker against two hubs and two workers.

For each topology it starts its own stack on 127.0.0.1 (Redis, ``inferhub serve`` and
``inferhub worker`` processes, as Compose runs them), then:

1. sends N requests at concurrency C spread over the hubs (bench/load.py's closed loop) while
   every hub's all-jobs feed (``GET /v1/events``) is read to the end: each replica must have
   received every event of the run, in order, as the global event log in Redis holds them;
2. submits J bulk jobs (progress events) alternately to each hub and follows each job's SSE
   stream through the *other* hub: each must be the job's complete, ordered event sequence.

It prints one JSON line per topology (rows/s, latency percentiles, errors, CPU seconds of each
kind of process, and the event checks), then a line comparing the two.

    python bench/scaleout.py --model digits --endpoint v2 --concurrency 32 --requests 4000
    python bench/scaleout.py --model heavy --endpoint v2-binary --concurrency 16 --requests 600

With ``--cluster`` it runs instead K hubs (``--hubs``) and one worker per pool, for three pools
on a 3-master Redis Cluster of its own on loopback (tests/cluster.py), one pool per master, and
measures what each master does per job (``/v1/jobs``, one row, ``Prefer: wait``) and per
online request (``/v2/.../infer``, one row): commands, bytes in and out, and CPU, each from
``INFO`` and ``/proc`` before and after a window of ``--seconds`` of closed-loop load, less
what the same window costs idle (heartbeats, polls). The figures go to docs/operations.md.

    python bench/scaleout.py --cluster --hubs 2 --seconds 5 --concurrency 8

Bounded in count and time, loopback only. A benchmark, not a test: figures go to
docs/operations.md by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import redis
from httpx_sse import aconnect_sse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.load import (  # noqa: E402
    Stack,
    build_body,
    closed_loop,
    cpu_seconds,
    make_repo,
    percentiles,
    sample_rows,
)
from cli.processes import free_port, start_cli, stop, wait_ready  # noqa: E402
from contract import keys  # noqa: E402
from tests.cluster import RedisClusterServers  # noqa: E402
from workers.repository import load_repository  # noqa: E402

TERMINAL = {"succeeded", "failed", "canceled"}
POOL = "default"  # the pool of every model make_repo writes


async def read_feed(url: str, into: list[tuple[str, str, str]], ready: asyncio.Event) -> None:
    """Every event of the all-jobs feed of one hub, as (id, job id, type), until cancelled."""
    async with (
        httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(10, read=None)) as client,
        aconnect_sse(client, "GET", "/v1/events") as source,
    ):
        ready.set()
        async for sse in source.aiter_sse():
            if sse.event in ("close", "reset"):
                into.append(("", "", sse.event))  # a slow reader was cut off: counted as loss
            elif sse.data:
                event = orjson.loads(sse.data)
                into.append((event["id"], event["job_id"], event["type"]))


def key(event_id: str) -> tuple[int, int]:
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq)


def check_feeds(
    feeds: list[list[tuple[str, str, str]]], logged: list[str], after: str
) -> dict[str, Any]:
    """Each hub's feed against the global log in Redis, over the ids after ``after``."""
    want = [i for i in logged if key(i) > key(after)]
    report = []
    for feed in feeds:
        got = [e[0] for e in feed if e[0] and key(e[0]) > key(after)]
        in_order = all(key(a) < key(b) for a, b in itertools.pairwise(got))
        missing = len(set(want) - set(got))
        cut = sum(1 for e in feed if not e[0])
        report.append({"events": len(got), "missing": missing, "in_order": in_order, "cut": cut})
    return {"logged": len(want), "hubs": report}


async def follow_jobs(
    urls: list[str], model: str, rows: list[list[float]], jobs: int, r: redis.Redis
) -> dict[str, Any]:
    """Bulk jobs submitted to hub i % n and followed through hub (i + 1) % n."""
    n = len(urls)
    clients = [httpx.AsyncClient(base_url=u, timeout=httpx.Timeout(30, read=120)) for u in urls]

    async def one(i: int) -> tuple[str, list[tuple[str, str]]]:
        body = {"model": model, "data": rows}
        answer = await clients[i % n].post("/v1/jobs", json=body)
        answer.raise_for_status()
        job_id = answer.json()["id"]
        seen: list[tuple[str, str]] = []
        async with aconnect_sse(clients[(i + 1) % n], "GET", f"/v1/jobs/{job_id}/events") as src:
            async for sse in src.aiter_sse():
                if sse.data:
                    event = orjson.loads(sse.data)
                    seen.append((event["id"], event["type"]))
        return job_id, seen

    try:
        results = await asyncio.gather(*(one(i) for i in range(jobs)))
    finally:
        for client in clients:
            await client.aclose()
    complete = lost = events = 0
    for job_id, seen in results:
        stored_ids = [eid.decode() for eid, _ in r.xrange(keys.job_events(job_id))]
        types = [t for _, t in seen]
        events += len(seen)
        lost += len(set(stored_ids) - {i for i, _ in seen})
        ok = (
            types[:2] == ["queued", "started"]
            and types[-1] in TERMINAL
            and set(types[2:-1]) <= {"progress"}
            and [i for i, _ in seen] == stored_ids
        )
        complete += ok
    return {"jobs": jobs, "complete_in_order": complete, "events": events, "lost": lost}


def run_topology(args: argparse.Namespace, repo: Path, hubs: int, workers: int) -> dict[str, Any]:
    model = load_repository(repo).models[args.model]
    spec = model.versions[model.latest].inputs[0]
    data = sample_rows(args.model, spec, args.requests * args.rows)
    requests = [
        build_body(
            args.endpoint, args.model, spec["name"], data[i * args.rows : (i + 1) * args.rows]
        )
        for i in range(args.requests)
    ]
    stack = Stack(repo, hubs=hubs, workers=workers)
    r = redis.Redis.from_url(stack.redis_url)
    try:
        # warm up every hub and worker (model sessions, connections), outside the measurement
        asyncio.run(closed_loop(stack.urls, requests[: 50 * hubs], 4 * hubs, 30))
        before = {k: [cpu_seconds(p) for p in v] for k, v in stack.pids().items()}
        loadgen_before = sum(os.times()[:2])

        async def load() -> tuple[Any, list[list[tuple[str, str, str]]], str]:
            feeds: list[list[tuple[str, str, str]]] = [[] for _ in stack.urls]
            ready = [asyncio.Event() for _ in stack.urls]
            readers = [
                asyncio.create_task(read_feed(u, f, e))
                for u, f, e in zip(stack.urls, feeds, ready, strict=True)
            ]
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in ready)), 10)
            last = r.xrevrange(keys.events_log(POOL), count=1)
            start_id = last[0][0].decode() if last else "0-0"
            result = await closed_loop(stack.urls, requests, args.concurrency, args.time_limit)
            await asyncio.sleep(1.0)  # the last events reach the feeds
            for reader in readers:
                reader.cancel()
                with contextlib.suppress(BaseException):
                    await reader
            return result, feeds, start_id

        (latencies, _, errors, wall), feeds, start_id = asyncio.run(load())
        loadgen = round(sum(os.times()[:2]) - loadgen_before, 2)
        cpu = {
            k: round(sum(cpu_seconds(p) for p in v) - sum(before[k]), 2)
            for k, v in stack.pids().items()
        }
        cpu["loadgen"] = loadgen  # with the feed readers
        logged = [eid.decode() for eid, _ in r.xrange(keys.events_log(POOL), min=f"({start_id}")]
        feed_check = check_feeds(feeds, logged, start_id)
        bulk_rows = data[: args.bulk_rows].tolist()
        follow = asyncio.run(follow_jobs(stack.urls, args.model, bulk_rows, args.follow_jobs, r))
    finally:
        r.close()
        stack.close()
    return {
        "hubs": hubs,
        "workers": workers,
        "model": args.model,
        "endpoint": args.endpoint,
        "concurrency": args.concurrency,
        "requests": len(latencies),
        "rows_per_s": round(len(latencies) * args.rows / wall, 1),
        "latency_ms": percentiles(latencies),
        "errors": errors,
        "wall_s": round(wall, 2),
        "cpu_s": cpu,
        "feeds": feed_check,
        "followed_through_other_hub": follow,
    }


CLUSTER_POOLS = ("b", "c", "a")
"""One pool per master of a fresh 3-master cluster: the slots of {b}, {c}, {a} (3300, 7365,
15495) fall in the first, second and third of redis-cli's even split."""


class ClusterStack:
    """A 3-master cluster, ``hubs`` hubs and one worker per pool, on loopback."""

    def __init__(self, folder: Path, repo: Path, hubs: int) -> None:
        self.log = (folder / "stack.log").open("wb")
        self.cluster = RedisClusterServers(folder)
        env = {"INFERHUB_REDIS_URL": self.cluster.url(), "INFERHUB_MODELS": str(repo)}
        self.workers = [
            start_cli("worker", env={**env, "INFERHUB_POOL": pool}, log=self.log)
            for pool in CLUSTER_POOLS
        ]
        self.urls: list[str] = []
        self.hubs = []
        try:
            for _ in range(hubs):
                port = free_port()
                ports = {"INFERHUB_PORT": str(port), "INFERHUB_GRPC_PORT": str(free_port())}
                self.hubs.append(start_cli("serve", env={**env, **ports}, log=self.log))
                self.urls.append(f"http://127.0.0.1:{port}")
            for url in self.urls:
                if not wait_ready(url, 60, watch=[*self.workers, *self.hubs]):
                    raise RuntimeError(f"{url} was not ready within 60 s; see {folder}")
        except BaseException:
            self.close()
            raise

    def nodes(self) -> dict[str, Any]:
        """Per master (by the pool it holds): commands, bytes in and out, CPU seconds."""
        found = {}
        for pool, port, process in zip(
            CLUSTER_POOLS, self.cluster.ports, self.cluster.processes, strict=True
        ):
            with redis.Redis(port=port) as node:
                stats = node.info("stats")
                calls = node.info("commandstats")
            found[pool] = {
                "commands": stats["total_commands_processed"],
                "bytes_in": stats["total_net_input_bytes"],
                "bytes_out": stats["total_net_output_bytes"],
                "cpu_us": cpu_seconds(process.pid) * 1e6,
                # by command; a script's own calls are counted too, under their names
                "calls": {k.removeprefix("cmdstat_"): v["calls"] for k, v in calls.items()},
            }
        return found

    def processes(self) -> dict[str, float]:
        """CPU microseconds of the hubs and of the workers so far."""
        return {
            "hubs": sum(cpu_seconds(p.pid) for p in self.hubs) * 1e6,
            "workers": sum(cpu_seconds(p.pid) for p in self.workers) * 1e6,
        }

    def close(self) -> None:
        stop([*self.workers, *self.hubs])
        self.cluster.stop()
        self.log.close()


def cluster_repo(into: Path) -> Path:
    """iris once per pool: ``iris_<pool>``."""
    repo = into / "models"
    for pool in CLUSTER_POOLS:
        shutil.copytree(ROOT / "models" / "iris", repo / f"iris_{pool}")
        (repo / f"iris_{pool}" / "config.toml").write_text(f'pool = "{pool}"\n')
    return repo


FIGURES = ("commands", "bytes_in", "bytes_out", "cpu_us")


def window(stack: ClusterStack, run: Any) -> tuple[dict[str, Any], int, float]:
    """What the masters did while ``run`` ran: per pool's master, the differences (and the
    hubs' and workers' CPU); the requests answered; the seconds."""
    before, cpu, started = stack.nodes(), stack.processes(), time.monotonic()
    answered = run()
    seconds = time.monotonic() - started
    after, cpu_after = stack.nodes(), stack.processes()
    delta: dict[str, Any] = {}
    for pool in CLUSTER_POOLS:
        delta[pool] = {k: after[pool][k] - before[pool][k] for k in FIGURES}
        calls = after[pool]["calls"]
        delta[pool]["calls"] = {
            c: n - before[pool]["calls"].get(c, 0)
            for c, n in calls.items()
            if n != before[pool]["calls"].get(c, 0)
        }
    delta |= {kind: cpu_after[kind] - cpu[kind] for kind in cpu}
    return delta, answered, seconds


def run_cluster(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    repo = cluster_repo(folder)
    stack = ClusterStack(folder, repo, args.hubs)
    row = np.asarray([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)
    lanes = {
        "job": [build_body("v1", f"iris_{p}", "input", row) for p in CLUSTER_POOLS],
        "online": [build_body("v2", f"iris_{p}", "input", row) for p in CLUSTER_POOLS],
    }

    def load(lane: str, limit_s: float) -> int:
        requests = lanes[lane] * 100_000  # bounded by the time limit
        latencies, _, errors, _ = asyncio.run(
            closed_loop(stack.urls, requests, args.concurrency, limit_s)
        )
        if errors:
            raise RuntimeError(f"{errors} {lane} requests failed")
        return len(latencies)

    try:
        for lane in lanes:  # warm-up: sessions, connections, scripts on every master
            load(lane, 2.0)
        idle, _, idle_s = window(stack, lambda: time.sleep(args.seconds) or 0)
        result: dict[str, Any] = {
            "hubs": args.hubs,
            "pools": len(CLUSTER_POOLS),
            "concurrency": args.concurrency,
            "load_avg": os.getloadavg()[0],
        }
        for lane in lanes:
            delta, answered, seconds = window(stack, lambda lane=lane: load(lane, args.seconds))
            idle_part = seconds / idle_s
            # each master's work per request (the requests spread evenly over the pools, one
            # per master), less what it does idle in as long: the sum is a request's cost
            by_node = {
                f"master of {pool}": {
                    k: round((delta[pool][k] - idle[pool][k] * idle_part) / answered, 1)
                    for k in FIGURES
                }
                for pool in CLUSTER_POOLS
            }
            calls: dict[str, float] = {}
            for pool in CLUSTER_POOLS:
                for c, n in delta[pool]["calls"].items():
                    calls[c] = calls.get(c, 0) + n - idle[pool]["calls"].get(c, 0) * idle_part
            result[lane] = {
                "per_s": round(answered / seconds, 1),
                "per_request_by_node": by_node,
                "per_request_total": {
                    k: round(sum(n[k] for n in by_node.values()), 1) for k in FIGURES
                },
                "cpu_us_per_request": {
                    kind: round((delta[kind] - idle[kind] * idle_part) / answered, 1)
                    for kind in ("hubs", "workers")
                },
                "calls_per_request": {
                    c: round(n / answered, 2)
                    for c, n in sorted(calls.items(), key=lambda kv: -kv[1])
                    if n / answered >= 0.05
                },
            }
        result["idle_per_s_by_node"] = {
            f"master of {pool}": {k: round(idle[pool][k] / idle_s, 1) for k in FIGURES}
            for pool in CLUSTER_POOLS
        }
        return result
    finally:
        stack.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="digits")
    parser.add_argument("--endpoint", choices=["v1", "v2", "v2-binary"], default="v2")
    parser.add_argument("--concurrency", "-c", type=int, default=32)
    parser.add_argument("--requests", "-n", type=int, default=3000)
    parser.add_argument("--rows", type=int, default=1, help="rows per request")
    parser.add_argument("--time-limit", type=float, default=120, help="stop sending after this")
    parser.add_argument("--follow-jobs", type=int, default=40, help="bulk jobs followed by SSE")
    parser.add_argument("--bulk-rows", type=int, default=600, help="rows of each followed job")
    parser.add_argument("--cluster", action="store_true", help="the Redis Cluster run instead")
    parser.add_argument("--hubs", type=int, default=2, help="hubs of the cluster run")
    parser.add_argument("--seconds", type=float, default=5, help="each window of the cluster run")
    args = parser.parse_args(argv)
    if args.cluster:
        with tempfile.TemporaryDirectory(prefix="inferhub-scaleout-") as tmp:
            print(json.dumps(run_cluster(args, Path(tmp))), flush=True)
        return
    args.requests = min(args.requests, 100_000)
    args.follow_jobs = min(args.follow_jobs, 1000)

    print(f"cpus: {os.cpu_count()}", file=sys.stderr)
    results = []
    with tempfile.TemporaryDirectory(prefix="inferhub-scaleout-") as tmp:
        repo = make_repo(Path(tmp))
        for hubs, workers in ((1, 1), (2, 2)):
            started = time.monotonic()
            result = run_topology(args, repo, hubs, workers)
            result["bench_s"] = round(time.monotonic() - started, 1)
            print(json.dumps(result), flush=True)
            results.append(result)
    one, two = results
    print(
        json.dumps(
            {
                "speedup_rows_per_s": round(two["rows_per_s"] / one["rows_per_s"], 3),
                "p50_ms": [one["latency_ms"]["p50"], two["latency_ms"]["p50"]],
                "p99_ms": [one["latency_ms"]["p99"], two["latency_ms"]["p99"]],
                "events_lost": sum(
                    h["missing"] + h["cut"] for r in results for h in r["feeds"]["hubs"]
                )
                + sum(r["followed_through_other_hub"]["lost"] for r in results),
            }
        )
    )


if __name__ == "__main__":
    main()
