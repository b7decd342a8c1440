"""Closed-loop load generator for inferhub, measured against onnxruntime in the same run.

It starts its own stack (Redis, hub processes, worker processes) on 127.0.0.1 with the example
models plus a generated heavy MLP, sends N requests at concurrency C, and prints one JSON line:
rows/s, latency percentiles, errors, the CPU seconds of hub, worker, Redis and itself, and
onnxruntime's own in-process rows/s on the same model, with the ratio between them.

    python bench/load.py --model digits --endpoint v2 --concurrency 64 --requests 5000
    python bench/load.py --model heavy --endpoint v2-binary --concurrency 32 --requests 3000
    python bench/load.py --model heavy --bulk 8192         # one /v1 job of 8192 rows
    python bench/load.py --idle 10                         # Redis commands/s and RSS when idle

Bounded in count and time, loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.models import build_mlp  # noqa: E402
from cli.processes import embedded_redis, free_port, start_cli, stop, wait_ready  # noqa: E402
from workers.repository import load_repository  # noqa: E402

HEAVY_CONFIG = """description = "8 x (1024x1024 MatMul + Relu), generated for the benchmark"
max_batch_size = 128
timeout_s = 120

[batching]
preferred_batch_size = 128
max_queue_delay_ms = 2

[onnxruntime]
intra_op_num_threads = 2
inter_op_num_threads = 1
"""


# --- the stack ---------------------------------------------------------------------------------


class Stack:
    """Redis, ``hubs`` hub processes and ``workers`` worker processes on loopback."""

    def __init__(
        self, repo: Path, hubs: int = 1, workers: int = 1, env: dict[str, str] | None = None
    ) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="inferhub-bench-"))
        self.log = (self.dir / "stack.log").open("wb")
        # Redis as `inferhub up` runs it: on a Unix socket
        self.redis, self.redis_url = embedded_redis(self.dir)
        self.workers: list[subprocess.Popen[bytes]] = []
        self.hubs: list[subprocess.Popen[bytes]] = []
        self.ports = [free_port() for _ in range(hubs)]
        self.urls = [f"http://127.0.0.1:{port}" for port in self.ports]
        env = {"INFERHUB_REDIS_URL": self.redis_url, "INFERHUB_MODELS": str(repo), **(env or {})}
        try:
            for _ in range(workers):
                self.workers.append(start_cli("worker", env=env, log=self.log))
            for port in self.ports:
                # each hub its own gRPC port: on the default one, the second hub would not start
                ports = {"INFERHUB_PORT": str(port), "INFERHUB_GRPC_PORT": str(free_port())}
                self.hubs.append(start_cli("serve", env={**env, **ports}, log=self.log))
            for url in self.urls:
                if not wait_ready(url, 60, watch=[self.redis, *self.workers, *self.hubs]):
                    raise RuntimeError(f"{url} was not ready within 60 s; see {self.dir}")
        except BaseException:
            self.close()
            raise

    def pids(self) -> dict[str, list[int]]:
        return {
            "hub": [p.pid for p in self.hubs],
            "worker": [p.pid for p in self.workers],
            "redis": [self.redis.pid],
        }

    def close(self) -> None:
        stop([*self.workers, *self.hubs])
        stop([self.redis])
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def make_repo(into: Path) -> Path:
    repo = into / "models"
    shutil.copytree(ROOT / "models", repo)
    build_mlp(repo / "heavy", config=HEAVY_CONFIG)
    return repo


# --- the requests ------------------------------------------------------------------------------


def sample_rows(model: str, input_spec: dict[str, Any], count: int) -> np.ndarray:
    from sklearn import datasets

    loaders = {
        "digits": datasets.load_digits,
        "iris": datasets.load_iris,
        "breast_cancer": datasets.load_breast_cancer,
    }
    if model in loaders:
        data = loaders[model]().data.astype(np.float32)
        return data[np.arange(count) % len(data)]
    width = input_spec["shape"][1]
    return np.random.default_rng(0).standard_normal((count, width)).astype(np.float32)


def build_body(
    endpoint: str, model: str, input_name: str, rows: np.ndarray
) -> tuple[str, bytes, dict[str, str]]:
    """(path, body, headers) of one request."""
    if endpoint == "v1-online":  # the online lane, asked of /v1/jobs
        doc = {"model": model, "data": rows, "lane": "online"}
        body = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
        return "/v1/jobs", body, {"Content-Type": "application/json"}
    if endpoint == "v1":
        body = orjson.dumps({"model": model, "data": rows}, option=orjson.OPT_SERIALIZE_NUMPY)
        return "/v1/jobs", body, {"Content-Type": "application/json", "Prefer": "wait=60"}
    tensor: dict[str, Any] = {"name": input_name, "shape": list(rows.shape), "datatype": "FP32"}
    path = f"/v2/models/{model}/infer"
    if endpoint == "v2":
        tensor["data"] = rows.reshape(-1)
        body = orjson.dumps({"inputs": [tensor]}, option=orjson.OPT_SERIALIZE_NUMPY)
        return path, body, {"Content-Type": "application/json"}
    raw = rows.astype("<f4").tobytes()
    tensor["parameters"] = {"binary_data_size": len(raw)}
    header = orjson.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}})
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }
    return path, header + raw, headers


def decode_answer(endpoint: str, answer: Answer) -> dict[str, np.ndarray]:
    """Output name -> array, from a /v1 job or a V2 response (JSON or binary)."""
    head, content = answer
    if "inference-header-content-length" in head:
        size = int(head["inference-header-content-length"])
        header = orjson.loads(content[:size])
        offset, result = size, {}
        for out in header["outputs"]:
            n = out["parameters"]["binary_data_size"]
            dtype = {"FP32": "<f4", "INT64": "<i8"}[out["datatype"]]
            raw = content[offset : offset + n]
            result[out["name"]] = np.frombuffer(raw, dtype=dtype).reshape(out["shape"])
            offset += n
        return result
    outputs = orjson.loads(content)["outputs"]
    return {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in outputs}


# --- the measurements --------------------------------------------------------------------------


def onnxruntime_rows_per_s(
    model_path: Path, rows: np.ndarray, threads: int, seconds: float = 2.0
) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    return session_rows_per_s(session, rows, seconds)


def session_rows_per_s(session: ort.InferenceSession, rows: np.ndarray, seconds: float) -> float:
    """Rows a second of ``session`` alone, run on ``rows`` again and again."""
    feed = {session.get_inputs()[0].name: rows}
    session.run(None, feed)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(None, feed)
        done += len(rows)
    return done / (time.perf_counter() - start)


def raw_request(url: str, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    host = url.split("://", 1)[1]
    head = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


Answer = tuple[dict[str, str], bytes]


async def closed_loop(
    urls: list[str],
    requests: list[tuple[str, bytes, dict[str, str]]],
    concurrency: int,
    limit_s: float,
    keep: int = 50,
) -> tuple[list[float], list[Answer | None], int, float]:
    """``concurrency`` users, user k on hub k % len(urls), each one request at a time, on a
    kept-alive socket with pre-built HTTP/1.1 requests: httpx spends milliseconds of CPU per
    request at high concurrency, and on a 2-core machine the client would be what is measured.
    Keeps the first ``keep`` answers, to check them."""
    latencies: list[float] = []
    answers: list[Answer | None] = [None] * min(keep, len(requests))
    errors = 0
    next_index = 0
    deadline = time.monotonic() + limit_s

    async def user(k: int) -> None:
        nonlocal next_index, errors
        url = urls[k % len(urls)]
        host, port = url.split("://", 1)[1].split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while next_index < len(requests) and time.monotonic() < deadline:
                i = next_index
                next_index += 1
                path, body, headers = requests[i]
                started = time.perf_counter()
                writer.write(raw_request(url, path, body, headers))
                status = int((await reader.readline()).split()[1])
                head: dict[str, str] = {}
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode().partition(":")
                    head[name.strip().lower()] = value.strip()
                content = await reader.readexactly(int(head.get("content-length", 0)))
                latencies.append(time.perf_counter() - started)
                errors += status != 200
                if i < len(answers) and status == 200:
                    answers[i] = (head, content)
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(user(k) for k in range(concurrency)))
    return latencies, answers, errors, time.perf_counter() - started


def percentiles(latencies: list[float]) -> dict[str, float]:
    ms = sorted(x * 1000 for x in latencies) or [float("nan")]
    pick = lambda q: round(ms[min(len(ms) - 1, int(q * len(ms)))], 3)  # noqa: E731
    return {
        "p50": round(statistics.median(ms), 3),
        "p90": pick(0.9),
        "p99": pick(0.99),
        "max": round(ms[-1], 3),
    }


def run_load(args: argparse.Namespace, stack: Stack, repo: Path) -> dict[str, Any]:
    model = load_repository(repo).models[args.model]
    version = model.versions[model.latest]
    spec = version.inputs[0]
    rows = sample_rows(args.model, spec, args.requests * args.rows)
    requests = [
        build_body(
            args.endpoint, args.model, spec["name"], rows[i * args.rows : (i + 1) * args.rows]
        )
        for i in range(args.requests)
    ]
    before = {k: [cpu_seconds(p) for p in v] for k, v in stack.pids().items()}
    self_before = sum(os.times()[:2])
    latencies, answers, errors, wall = asyncio.run(
        closed_loop(stack.urls, requests, args.concurrency, args.time_limit)
    )
    cpu = {
        k: round(sum(cpu_seconds(p) for p in v) - sum(before[k]), 2)
        for k, v in stack.pids().items()
    }
    cpu["loadgen"] = round(sum(os.times()[:2]) - self_before, 2)

    # validate a sample of answers against onnxruntime in this process
    threads = model.config.onnxruntime.intra_op_num_threads
    reference = ort.InferenceSession(str(version.path), providers=["CPUExecutionProvider"])
    checked = 0
    for i, response in enumerate(answers):
        if response is None:
            continue
        got = decode_answer(args.endpoint, response)
        feed = {spec["name"]: rows[i * args.rows : (i + 1) * args.rows]}
        for name, want in zip(
            [o.name for o in reference.get_outputs()], reference.run(None, feed), strict=True
        ):
            np.testing.assert_allclose(got[name], want, rtol=1e-4, atol=1e-5)
        checked += 1

    batch_rows = rows[: model.config.max_batch_size]
    ort_same = onnxruntime_rows_per_s(version.path, rows[: args.rows], threads)
    ort_ceiling = onnxruntime_rows_per_s(version.path, batch_rows, threads)
    done = len(latencies) * args.rows
    rows_per_s = done / wall
    return {
        "model": args.model,
        "endpoint": args.endpoint,
        "concurrency": args.concurrency,
        "requests": len(latencies),
        "rows_per_request": args.rows,
        "rows_per_s": round(rows_per_s, 1),
        "latency_ms": percentiles(latencies),
        "errors": errors,
        "validated": checked,
        "cpu_s": cpu,
        "wall_s": round(wall, 2),
        "onnxruntime_rows_per_s": {
            f"batch_{args.rows}": round(ort_same, 1),
            f"batch_{len(batch_rows)}": round(ort_ceiling, 1),
        },
        "ratio_to_onnxruntime": {
            f"batch_{args.rows}": round(rows_per_s / ort_same, 4),
            f"batch_{len(batch_rows)}": round(rows_per_s / ort_ceiling, 4),
        },
    }


def run_bulk(args: argparse.Namespace, stack: Stack, repo: Path) -> dict[str, Any]:
    from hub.client import Client

    model = load_repository(repo).models[args.model]
    version = model.versions[model.latest]
    rows = sample_rows(args.model, version.inputs[0], args.bulk)
    with Client(stack.urls[0], timeout=300) as hub:
        start = time.perf_counter()
        job = hub.submit(args.model, rows)
        accepted = time.perf_counter() - start
        progress, started_ts, ended_ts = 0, 0.0, 0.0
        for event in hub.follow(job["id"]):
            progress += event["type"] == "progress"
            started_ts = event["ts"] if event["type"] == "started" else started_ts
            ended_ts = event["ts"]
        wall = time.perf_counter() - start
        status = hub.job(job["id"])["status"]
    running = ended_ts - started_ts  # the worker's part: from its first event to its last
    ceiling = onnxruntime_rows_per_s(
        version.path,
        rows[: model.config.max_batch_size],
        model.config.onnxruntime.intra_op_num_threads,
    )
    return {
        "model": args.model,
        "bulk_rows": args.bulk,
        "status": status,
        "submit_s": round(accepted, 3),
        "wall_s": round(wall, 3),
        "running_s": round(running, 3),
        "rows_per_s": {
            "end_to_end": round(args.bulk / wall, 1),
            "running": round(args.bulk / running, 1),
        },
        "progress_events": progress,
        "onnxruntime_rows_per_s": {f"batch_{model.config.max_batch_size}": round(ceiling, 1)},
        "ratio_to_onnxruntime": {
            "end_to_end": round(args.bulk / wall / ceiling, 4),
            "running": round(args.bulk / running / ceiling, 4),
        },
    }


def run_idle(args: argparse.Namespace, stack: Stack) -> dict[str, Any]:
    client = redis.Redis.from_url(stack.redis_url)
    time.sleep(2)  # let start-up traffic settle
    before = client.info("stats")["total_commands_processed"]
    time.sleep(args.idle)
    after = client.info("stats")["total_commands_processed"]
    pids = stack.pids()
    return {
        "idle_s": args.idle,
        "workers": len(pids["worker"]),
        "redis_commands_per_s": round((after - before - 1) / args.idle, 2),
        "rss_mib": {k: round(sum(rss_mib(p) for p in v), 1) for k, v in pids.items()},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="digits")
    parser.add_argument("--endpoint", choices=["v1", "v1-online", "v2", "v2-binary"], default="v2")
    parser.add_argument("--concurrency", "-c", type=int, default=1)
    parser.add_argument("--requests", "-n", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=1, help="rows per request")
    parser.add_argument("--time-limit", type=float, default=120, help="stop sending after this")
    parser.add_argument("--hubs", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--bulk", type=int, default=0, help="one /v1 job of this many rows")
    parser.add_argument("--idle", type=float, default=0, help="measure an idle stack for N s")
    args = parser.parse_args(argv)
    args.requests = min(args.requests, 200_000)

    with tempfile.TemporaryDirectory(prefix="inferhub-bench-repo-") as tmp:
        repo = make_repo(Path(tmp))
        # a bulk job of the heavy model is ~80 MB of JSON: let it in
        env = {"INFERHUB_MAX_BODY_BYTES": str(512 * 2**20)} if args.bulk else {}
        stack = Stack(repo, hubs=args.hubs, workers=args.workers, env=env)
        try:
            if args.idle:
                result = run_idle(args, stack)
            elif args.bulk:
                result = run_bulk(args, stack, repo)
            else:
                result = run_load(args, stack, repo)
        finally:
            stack.close()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
