"""Fan-out benchmark: K clients subscribed to one model's events (over SSE or WebSocket) while
jobs run; reports delivery latency (from the event's timestamp to its receipt), events
delivered per second, and the hub's resident memory per idle connection.

    python bench/fanout.py --transport ws  --clients 1000 --jobs-per-s 10 --seconds 20
    python bench/fanout.py --transport sse --clients 10000 --jobs-per-s 1 --seconds 20

It starts its own Redis, worker and hub on loopback, and raises the file descriptor limit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson
import websockets

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.load import Stack, make_repo, rss_mib  # noqa: E402


class Receiver:
    def __init__(self, clients: int) -> None:
        self.latencies: list[float] = []
        self.clients = clients
        self.connected = 0
        self.failed = 0
        self.all_in = asyncio.Event()  # every client connected or failed

    def count(self, ok: bool) -> None:
        self.connected += ok
        self.failed += not ok
        if self.connected + self.failed == self.clients:
            self.all_in.set()


async def sse_client(url: str, rx: Receiver, stop: asyncio.Event) -> None:
    host, port = url.removeprefix("http://").split(":")
    try:
        reader, writer = await asyncio.open_connection(host, int(port), limit=2**20)
        writer.write(
            f"GET /v1/events?model=iris HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
        await writer.drain()
        while (await reader.readline()) not in (b"\r\n", b""):
            pass  # the response head
    except OSError:
        rx.count(False)
        return
    rx.count(True)
    try:
        while not stop.is_set():
            line = await reader.readline()
            if not line:
                break
            if line.startswith(b"data: {"):
                rx.latencies.append(time.time() - orjson.loads(line[6:])["ts"])
    finally:
        writer.close()


async def ws_client(url: str, rx: Receiver, stop: asyncio.Event) -> None:
    try:
        ws = await websockets.connect(url.replace("http://", "ws://") + "/v1/ws", open_timeout=60)
        await ws.send('{"type": "subscribe", "ref": 1, "model": "iris"}')
        await ws.recv()
    except (OSError, websockets.WebSocketException, TimeoutError):
        rx.count(False)
        return
    rx.count(True)
    try:
        while not stop.is_set():
            message = orjson.loads(await ws.recv())
            if message["type"] == "event":
                rx.latencies.append(time.time() - message["event"]["ts"])
    except websockets.ConnectionClosed:
        pass
    finally:
        await ws.close()


async def run(args: argparse.Namespace, stack: Stack) -> dict[str, object]:
    url = stack.urls[0]
    hub_pid = stack.pids()["hub"][0]
    rx = Receiver(args.clients)
    stop = asyncio.Event()
    client = sse_client if args.transport == "sse" else ws_client
    baseline = rss_mib(hub_pid)
    tasks = []
    for k in range(args.clients):  # connect in waves, so the listen backlog keeps up
        tasks.append(asyncio.create_task(client(url, rx, stop)))
        if k % 200 == 199:
            await asyncio.sleep(0.05)
    await asyncio.wait_for(rx.all_in.wait(), 120)
    await asyncio.sleep(2)
    idle_rss = rss_mib(hub_pid)

    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        jobs = 0
        start = time.monotonic()
        while time.monotonic() - start < args.seconds:
            await http.post("/v1/jobs", json={"model": "iris", "data": [[5.1, 3.5, 1.4, 0.2]]})
            jobs += 1
            await asyncio.sleep(max(0.0, start + jobs / args.jobs_per_s - time.monotonic()))
        await asyncio.sleep(3)  # let the last events arrive
        wall = time.monotonic() - start
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

    lat = sorted(x * 1000 for x in rx.latencies) or [float("nan")]
    pick = lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))], 2)  # noqa: E731
    expected = jobs * 3 * rx.connected
    return {
        "transport": args.transport,
        "clients": args.clients,
        "connected": rx.connected,
        "failed": rx.failed,
        "jobs": jobs,
        "events_expected": expected,
        "events_delivered": len(rx.latencies),
        "delivered_per_s": round(len(rx.latencies) / wall, 1),
        "latency_ms": {"p50": pick(0.5), "p99": pick(0.99), "max": round(lat[-1], 2)},
        "hub_rss_mib": {"before": round(baseline, 1), "idle_connected": round(idle_rss, 1)},
        "hub_kib_per_idle_connection": round(
            (idle_rss - baseline) * 1024 / max(1, rx.connected), 1
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transport", choices=["ws", "sse"], default="ws")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--jobs-per-s", type=float, default=10)
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    args.clients = min(args.clients, 20_000)
    args.seconds = min(args.seconds, 300)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the hub inherits it
    with tempfile.TemporaryDirectory(prefix="inferhub-fanout-") as tmp:
        stack = Stack(make_repo(Path(tmp)))
        try:
            result = asyncio.run(run(args, stack))
        finally:
            stack.close()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
