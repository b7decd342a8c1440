"""Slow readers benchmark: clients that open an event stream and never read, while one large
bulk job runs; reports the hub's resident memory before, at its peak and after, and how many
of the readers the hub cut off.

    python bench/slow_readers.py --transport sse --readers 40 --rows 100000
    python bench/slow_readers.py --transport ws --readers 20 --rows 100000

It starts its own Redis, worker and hub on loopback (slow-consumer limit 10 s, the default).
Each reader is a raw socket with a 4 KiB receive buffer, subscribed to the model's events.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import socket
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.load import Stack, make_repo, rss_mib, sample_rows  # noqa: E402
from workers.repository import load_repository  # noqa: E402


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def open_reader(port: int, transport: str, model: str) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    host = f"Host: 127.0.0.1:{port}\r\n"
    if transport == "sse":
        sock.sendall(f"GET /v1/events?model={model} HTTP/1.1\r\n{host}\r\n".encode())
    else:
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            f"GET /v1/ws HTTP/1.1\r\n{host}Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    if transport == "ws":
        payload = json.dumps({"type": "subscribe", "model": model}).encode()
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        sock.sendall(struct.pack("!BB", 0x81, 0x80 | len(payload)) + mask + masked)
    return sock


def established(hub_port: int, client_port: int) -> bool:
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, remote, state = line.split()[1:4]
        ports = int(local.split(":")[1], 16), int(remote.split(":")[1], 16)
        if ports == (hub_port, client_port) and state == "01":
            return True
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transport", choices=["sse", "ws"], default="sse")
    parser.add_argument("--readers", type=int, default=40)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--model", default="digits")
    parser.add_argument("--watch-s", type=float, default=40.0, help="how long to watch after")
    parser.add_argument(
        "--body", choices=["npy", "json"], default="npy", help="how the job's rows are sent"
    )
    args = parser.parse_args()

    from hub.client import Client

    with tempfile.TemporaryDirectory() as tmp:
        repo = make_repo(Path(tmp))
        stack = Stack(repo, env={"INFERHUB_MAX_BODY_BYTES": str(512 * 2**20)})
        try:
            pid, port = stack.hubs[0].pid, stack.ports[0]
            model = load_repository(repo).models[args.model]
            rows = sample_rows(args.model, model.versions[model.latest].inputs[0], args.rows)
            readers = [open_reader(port, args.transport, args.model) for _ in range(args.readers)]
            time.sleep(0.5)  # let the subscriptions settle before the baseline
            before = rss_mib(pid)
            peak = [before]

            def sample() -> None:
                while not done.is_set():
                    peak[0] = max(peak[0], rss_mib(pid))
                    done.wait(0.05)

            done = threading.Event()
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            with Client(stack.urls[0], timeout=300) as hub:
                start = time.perf_counter()
                if args.body == "json":
                    job = hub.submit(args.model, rows)
                else:  # the bulk body a user of binary inputs sends: no JSON to parse
                    body = io.BytesIO()
                    np.save(body, rows, allow_pickle=False)
                    job = httpx.post(
                        f"{stack.urls[0]}/v1/jobs",
                        params={"model": args.model},
                        content=body.getvalue(),
                        headers={"Content-Type": "application/x-npy"},
                        timeout=300,
                    ).json()
                for _ in hub.follow(job["id"]):
                    pass
                job_s = time.perf_counter() - start
            ports = [s.getsockname()[1] for s in readers]
            deadline = time.monotonic() + args.watch_s
            while time.monotonic() < deadline and any(established(port, p) for p in ports):
                time.sleep(0.2)
            cut_s = time.perf_counter() - start
            done.set()
            sampler.join()
            result = {
                "transport": args.transport,
                "body": args.body,
                "readers": args.readers,
                "rows": args.rows,
                "job_s": round(job_s, 2),
                "hub_rss_mib": {
                    "before": round(before),
                    "peak": round(max(peak[0], status_kib(pid, "VmHWM") / 1024)),
                    "after": round(rss_mib(pid)),
                },
                "readers_cut": sum(not established(port, p) for p in ports),
                "all_cut_after_s": round(cut_s, 1),
            }
            print(json.dumps(result, indent=2))
            for s in readers:
                s.close()
        finally:
            stack.close()


if __name__ == "__main__":
    main()
