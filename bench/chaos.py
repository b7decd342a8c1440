"""Chaos run: a steady load over HTTP and WebSocket while workers are killed and restarted,
and Redis and the hub are restarted, at random moments. Then every accepted job must have
ended exactly once, with the right answer.

    python bench/chaos.py --seconds 60 --seed 1

Redis runs append-only (fsync always), as docs/operations.md recommends: without persistence a
Redis restart forgets every job, by design. Bounded in time, loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import orjson
import websockets

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cli.processes import free_port, start_cli, start_redis, stop, wait_ready  # noqa: E402

TERMINAL = {"succeeded", "failed", "canceled"}


class Chaos:
    def __init__(self, folder: Path, workers: int) -> None:
        self.folder = folder
        self.log = (folder / "stack.log").open("wb")
        self.redis_port, self.hub_port = free_port(), free_port()
        self.env = {
            "INFERHUB_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "INFERHUB_MODELS": str(ROOT / "models"),
            "INFERHUB_PORT": str(self.hub_port),
            "INFERHUB_GRPC_PORT": str(free_port()),
            "INFERHUB_HEARTBEAT_S": "0.5",
        }
        self.url = f"http://127.0.0.1:{self.hub_port}"
        self.redis = start_redis(self.redis_port, folder, persistent=True)
        self.workers = [self._worker() for _ in range(workers)]
        self.hub = self._hub()
        self.faults: dict[str, int] = {}

    def _worker(self) -> subprocess.Popen[bytes]:
        return start_cli("worker", env=self.env, log=self.log)

    def _hub(self) -> subprocess.Popen[bytes]:
        return start_cli("serve", env=self.env, log=self.log)

    def inject(self, rng: random.Random) -> str:
        fault = rng.choice(["kill_worker", "stop_worker", "restart_redis", "restart_hub"])
        if fault in ("kill_worker", "stop_worker"):
            victim = self.workers.pop(rng.randrange(len(self.workers)))
            if fault == "kill_worker":
                victim.kill()
                victim.wait()
            else:
                stop([victim], grace_s=30)
            self.workers.append(self._worker())
        elif fault == "restart_redis":
            stop([self.redis])
            self.redis = start_redis(self.redis_port, self.folder, persistent=True)
        else:
            stop([self.hub], grace_s=10)
            self.hub = self._hub()
        self.faults[fault] = self.faults.get(fault, 0) + 1
        return fault

    def close(self) -> None:
        stop([self.hub, *self.workers])
        stop([self.redis])
        self.log.close()


async def http_user(
    url: str,
    rows: np.ndarray,
    accepted: dict[str, int],
    stats: dict[str, int],
    until: float,
    rng: random.Random,
) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        while time.monotonic() < until:
            i = rng.randrange(len(rows))
            stats["submitted"] += 1
            try:
                r = await client.post(
                    "/v1/jobs", json={"model": "iris", "data": [rows[i].tolist()]}
                )
            except httpx.HTTPError:
                stats["refused"] += 1
                await asyncio.sleep(0.2)
                continue
            if r.status_code == 202:
                accepted[r.json()["id"]] = i
            else:
                stats["refused"] += 1
            await asyncio.sleep(0.02)


async def ws_user(
    url: str,
    rows: np.ndarray,
    accepted: dict[str, int],
    stats: dict[str, int],
    until: float,
    rng: random.Random,
) -> None:
    ws_url = url.replace("http://", "ws://") + "/v1/ws"
    while time.monotonic() < until:
        in_flight = False
        try:
            async with websockets.connect(ws_url, open_timeout=5) as ws:
                while time.monotonic() < until:
                    i = rng.randrange(len(rows))
                    stats["submitted"] += 1
                    in_flight = True
                    body = {"type": "submit", "ref": i, "model": "iris", "data": [rows[i].tolist()]}
                    await ws.send(orjson.dumps(body).decode())
                    while True:  # the events of earlier jobs come on the same socket
                        message = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
                        if message.get("ref") == i and message["type"] in ("accepted", "error"):
                            break
                    in_flight = False
                    if message["type"] == "accepted":
                        accepted[message["job"]["id"]] = i
                    else:
                        stats["refused"] += 1
                    await asyncio.sleep(0.02)
        except (OSError, websockets.WebSocketException, TimeoutError):
            # a submission in flight was not acknowledged: the client cannot know whether it
            # was accepted, so it counts as refused (an accepted one is still checked below
            # only if acknowledged)
            stats["refused"] += in_flight
            await asyncio.sleep(0.2)


async def load(
    url: str, rows: np.ndarray, seconds: float, seed: int, chaos: Chaos
) -> tuple[dict[str, int], dict[str, int]]:
    accepted: dict[str, int] = {}
    stats = {"submitted": 0, "refused": 0}
    rng = random.Random(seed)
    until = time.monotonic() + seconds

    async def faults() -> None:
        while True:
            await asyncio.sleep(rng.uniform(2, 6))
            if time.monotonic() > until - 2:
                return
            fault = await asyncio.to_thread(chaos.inject, rng)
            print(f"{time.strftime('%H:%M:%S')} fault: {fault}", file=sys.stderr)

    users = [
        http_user(url, rows, accepted, stats, until, random.Random(seed + k)) for k in range(3)
    ]
    users += [
        ws_user(url, rows, accepted, stats, until, random.Random(seed + 10 + k)) for k in range(2)
    ]
    await asyncio.gather(faults(), *users)
    return accepted, stats


def verify(
    url: str,
    redis_url: str,
    accepted: dict[str, int],
    rows: np.ndarray,
    expected: np.ndarray,
    deadline_s: float,
) -> dict[str, int]:
    import redis as redis_sync

    from contract import keys
    from contract.events import Event

    client = httpx.Client(base_url=url, timeout=10)
    pending = set(accepted)
    deadline = time.monotonic() + deadline_s
    final: dict[str, dict[str, Any]] = {}
    while pending and time.monotonic() < deadline:
        for job_id in list(pending):
            job = client.get(f"/v1/jobs/{job_id}").json()
            if job.get("status") in TERMINAL:
                final[job_id] = job
                pending.discard(job_id)
        time.sleep(0.5)
    store = redis_sync.Redis.from_url(redis_url)
    duplicated = wrong = failed = 0
    for job_id, job in final.items():
        events = [
            Event.from_wire(i.decode(), b[b"e"]) for i, b in store.xrange(keys.job_events(job_id))
        ]
        duplicated += sum(e.terminal for e in events) != 1
        if job["status"] != "succeeded":
            failed += 1
        elif job["outputs"][0]["data"] != [int(expected[accepted[job_id]])]:
            wrong += 1
    return {
        "ended": len(final),
        "lost": len(pending),
        "duplicated": duplicated,
        "wrong": wrong,
        "failed": failed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    args.seconds = min(args.seconds, 600)

    from sklearn.datasets import load_iris

    rows = load_iris().data.astype(np.float32)
    session = ort.InferenceSession(
        str(ROOT / "models" / "iris" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    expected = session.run(["label"], {"input": rows})[0]

    folder = Path(tempfile.mkdtemp(prefix="inferhub-chaos-"))
    chaos = Chaos(folder, args.workers)
    try:
        if not wait_ready(chaos.url, 60):
            raise RuntimeError("the stack did not become ready in 60 s")
        accepted, stats = asyncio.run(load(chaos.url, rows, args.seconds, args.seed, chaos))
        result = verify(
            chaos.url, chaos.env["INFERHUB_REDIS_URL"], accepted, rows, expected, deadline_s=120
        )
        print(
            json.dumps(
                {
                    "seconds": args.seconds,
                    "submitted": stats["submitted"],
                    "accepted": len(accepted),
                    "refused": stats["refused"],
                    **result,
                    "faults": chaos.faults,
                }
            )
        )
    finally:
        chaos.close()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
