"""Fan-out benchmark: K clients subscribed to one model's events (over SSE or WebSocket) while
jobs run; reports delivery latency (from the event's timestamp to its receipt), events
delivered per second and per CPU second of the hub, and the hub's resident memory per idle
connection.

    python bench/fanout.py --transport ws  --clients 1000 --jobs-per-s 10 --seconds 15
    python bench/fanout.py --transport sse --clients 10000 --jobs-per-s 1 --seconds 15

It starts its own Redis, worker and hub on loopback, and raises the file descriptor limit.
The clients share this one process and the machine's cores with the hub, so they are kept
lean: each is an asyncio protocol without a task of its own, reading its stream by hand, and at
most ``--connecting`` handshakes are in flight at once, so that an opening burst of 10,000
connects never overflows the listen backlog. ``--gc-stats`` adds the hub's garbage
collections while the clients connect and while the jobs run (count, total and longest pause
per generation) and the objects frozen out of the collector's scans, recorded in the hub by
``bench/gcstats/sitecustomize.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.load import Stack, cpu_seconds, make_repo, rss_mib  # noqa: E402

SUBSCRIBE = b'{"type": "subscribe", "ref": 1, "model": "iris"}'


class Receiver:
    """What every client reports to: connects, refusals and each event's latency."""

    def __init__(self, clients: int, connecting: int) -> None:
        self.latencies: list[float] = []
        self.clients = clients
        self.connected = 0
        self.failed = 0
        self.all_in = asyncio.Event()  # every client connected or failed
        self.slots = asyncio.Semaphore(connecting)  # handshakes in flight

    def count(self, ok: bool) -> None:
        self.connected += ok
        self.failed += not ok
        self.slots.release()
        if self.connected + self.failed == self.clients:
            self.all_in.set()

    def event(self, data: bytes, now: float) -> None:
        self.latencies.append(now - orjson.loads(data)["ts"])


class SSEClient(asyncio.Protocol):
    """``GET /v1/events?model=iris``, read line by line (an event's data is one line)."""

    def __init__(self, rx: Receiver, host: str) -> None:
        self.rx = rx
        self.host = host
        self.head = True
        self.rest = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(
            b"GET /v1/events?model=iris HTTP/1.1\r\nHost: %s\r\n"
            b"Accept: text/event-stream\r\n\r\n" % self.host.encode()
        )

    def data_received(self, data: bytes) -> None:
        data = self.rest + data
        if self.head:
            head, found, data = data.partition(b"\r\n\r\n")
            if not found:
                self.rest = head
                return
            self.head = False
            self.rx.count(head.startswith(b"HTTP/1.1 200"))
        *lines, self.rest = data.split(b"\n")
        now = time.time()
        for line in lines:
            if line.startswith(b"data: {"):
                self.rx.event(line[6:], now)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.head:
            self.head = False
            self.rx.count(False)


class WSClient(asyncio.Protocol):
    """``/v1/ws``, subscribed to the model. It speaks RFC 6455 by hand, as the SSE client reads
    its stream: the hub's frames are unmasked and whole, and the ``websockets`` library's
    parser would cost the shared cores three times as much per message (the tests use the
    library)."""

    def __init__(self, rx: Receiver, host: str) -> None:
        self.rx = rx
        self.host = host
        self.head = True
        self.open = False
        self.rest = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        key = base64.b64encode(os.urandom(16))
        transport.write(
            b"GET /v1/ws HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
            # what the websockets library offers too (the hub declines compression): the
            # headers a connection keeps are part of its memory
            b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
            b"User-Agent: Python/3.11 websockets/17.4\r\n\r\n" % (self.host.encode(), key)
        )

    def data_received(self, data: bytes) -> None:
        data = self.rest + data
        if self.head:
            head, found, data = data.partition(b"\r\n\r\n")
            if not found:
                self.rest = head
                return
            self.head = False
            if not head.startswith(b"HTTP/1.1 101"):
                self.open = True
                self.rx.count(False)
                return
            self._send(0x1, SUBSCRIBE)
        now = time.time()
        at = 0
        while len(data) - at >= 2:
            size, start = data[at + 1] & 0x7F, at + 2
            if size >= 126:
                start += 2 if size == 126 else 8
                size = int.from_bytes(data[at + 2 : start])
            end = start + size
            if end > len(data) or start > len(data):
                break
            opcode, payload, at = data[at] & 0x0F, data[start:end], end
            if opcode == 0x9:  # the hub's ping
                self._send(0xA, payload)
            elif opcode == 0x1 and not self.open:  # the subscription's "accepted"
                self.open = True
                self.rx.count(True)
            elif opcode == 0x1 and payload.startswith(b'{"type":"event"'):
                self.rx.event(payload[24:-1], now)  # '{"type":"event","event":' ... '}'
        self.rest = data[at:]

    def _send(self, opcode: int, payload: bytes) -> None:
        """A short frame, masked as a client's must be."""
        assert self.transport is not None and len(payload) < 126
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.transport.write(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.open:
            self.open = True
            self.rx.count(False)


async def connect(url: str, transport: str, rx: Receiver) -> asyncio.Transport | None:
    host, port = url.removeprefix("http://").split(":")
    await rx.slots.acquire()  # released by the client when its handshake ends
    factory = (lambda: SSEClient(rx, host)) if transport == "sse" else (lambda: WSClient(rx, host))
    try:
        conn, _ = await asyncio.get_running_loop().create_connection(factory, host, int(port))
    except OSError:
        rx.count(False)
        return None
    return conn


async def run(
    args: argparse.Namespace, stack: Stack
) -> tuple[dict[str, object], dict[str, list[float]]]:
    """The result, and the wall-clock span of each phase (connect, jobs)."""
    url = stack.urls[0]
    hub_pid = stack.pids()["hub"][0]
    rx = Receiver(args.clients, args.connecting)
    baseline = rss_mib(hub_pid)
    phases: dict[str, list[float]] = {"connect": [time.time()]}
    opened = time.monotonic()
    conns = await asyncio.gather(*(connect(url, args.transport, rx) for _ in range(args.clients)))
    await asyncio.wait_for(rx.all_in.wait(), 300)
    connect_s = time.monotonic() - opened
    phases["connect"].append(time.time())
    await asyncio.sleep(2)
    idle_rss = rss_mib(hub_pid)

    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        body = {"model": "iris", "data": [[5.1, 3.5, 1.4, 0.2]]}
        posts = []
        hub_cpu, own_cpu = cpu_seconds(hub_pid), time.process_time()
        start = time.monotonic()
        phases["jobs"] = [time.time()]
        while (jobs := len(posts)) < args.seconds * args.jobs_per_s:
            await asyncio.sleep(max(0.0, start + jobs / args.jobs_per_s - time.monotonic()))
            posts.append(asyncio.create_task(http.post("/v1/jobs", json=body)))
        answers = await asyncio.gather(*posts, return_exceptions=True)
        await asyncio.sleep(3)  # let the last events arrive
        wall = time.monotonic() - start
        phases["jobs"].append(time.time())
        hub_cpu = cpu_seconds(hub_pid) - hub_cpu
        own_cpu = time.process_time() - own_cpu
    for conn in conns:
        if conn is not None:
            conn.abort()

    jobs = sum(isinstance(a, httpx.Response) and a.is_success for a in answers)
    lat = sorted(x * 1000 for x in rx.latencies) or [float("nan")]
    pick = lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))], 2)  # noqa: E731
    result = {
        "transport": args.transport,
        "clients": args.clients,
        "connected": rx.connected,
        "failed": rx.failed,
        "connect_s": round(connect_s, 1),
        "jobs": jobs,
        "events_expected": jobs * 3 * rx.connected,
        "events_delivered": len(rx.latencies),
        "delivered_per_s": round(len(rx.latencies) / wall, 1),
        "hub_cpu_s": round(hub_cpu, 2),
        "delivered_per_hub_cpu_s": round(len(rx.latencies) / max(hub_cpu, 0.01)),
        "clients_cpu_s": round(own_cpu, 2),
        "latency_ms": {"p50": pick(0.5), "p99": pick(0.99), "max": round(lat[-1], 2)},
        "hub_rss_mib": {"before": round(baseline, 1), "idle_connected": round(idle_rss, 1)},
        "hub_kib_per_idle_connection": round(
            (idle_rss - baseline) * 1024 / max(1, rx.connected), 1
        ),
    }
    return result, phases


def gc_summary(records: list[list[float]], phases: dict[str, list[float]]) -> dict[str, object]:
    """Per phase and generation: collections, their total and their longest pause (ms)."""
    summary: dict[str, object] = {}
    for phase, (begin, end) in phases.items():
        for gen in range(3):
            pauses = [s * 1000 for t, g, s in records if g == gen and begin <= t <= end]
            summary[f"{phase}_gen{gen}"] = {
                "count": len(pauses),
                "total_ms": round(sum(pauses), 1),
                "max_ms": round(max(pauses, default=0.0), 1),
            }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transport", choices=["ws", "sse"], default="ws")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--jobs-per-s", type=float, default=10)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--connecting", type=int, default=256, help="handshakes in flight")
    parser.add_argument("--gc-stats", action="store_true", help="the hub's garbage collections")
    args = parser.parse_args()
    args.clients = min(args.clients, 20_000)
    args.seconds = min(args.seconds, 300)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the hub inherits it
    with tempfile.TemporaryDirectory(prefix="inferhub-fanout-") as tmp:
        # every client is the same (keyless) tenant: let it hold them all
        env = {"INFERHUB_MAX_STREAMS_PER_TENANT": str(args.clients + 100)}
        if args.gc_stats:
            path = os.pathsep.join(
                filter(None, [str(ROOT / "bench" / "gcstats"), os.environ.get("PYTHONPATH")])
            )
            env |= {"PYTHONPATH": path, "INFERHUB_GC_STATS_DIR": tmp}
        stack = Stack(make_repo(Path(tmp)), env=env)
        hub_pid = stack.pids()["hub"][0]
        try:
            result, phases = asyncio.run(run(args, stack))
        finally:
            stack.close()  # the hub writes its collections as it exits
        if args.gc_stats:
            recorded = json.loads((Path(tmp) / f"{hub_pid}.json").read_text())
            result["hub_gc"] = {
                "frozen": recorded["frozen"],
                **gc_summary(recorded["collections"], phases),
            }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
