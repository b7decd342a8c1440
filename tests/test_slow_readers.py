"""Clients that stop reading (issue 13, item 2): a hub process of its own, raw sockets with a
4 KiB receive buffer that never read, and one job whose ``succeeded`` event is ~10 MB.

Outputs that large are stored once and only summarised in the event by default; the worker
here (on the module's own Redis database, tests/stack.py) runs with
``INFERHUB_INLINE_OUTPUT_BYTES`` raised above them, as an operator may choose, so that the
event itself is large.

The hub must write each event once for all of them (not a copy per reader), give up on them
after ``INFERHUB_SLOW_CONSUMER_S`` and drop their connections, unsent bytes and all.
"""

from __future__ import annotations

import base64
import os
import socket
import struct
from pathlib import Path

import httpx
import pytest
from helpers import wait_for
from stack import Stack

READERS = 24
ESTABLISHED = "01"  # in /proc/net/tcp
ROWS = 1000  # slow: 1000 x 1024 FP32 outputs, a ~10 MB succeeded event in JSON
INLINE = 64 * 2**20


@pytest.fixture(scope="module")
def hub(stack: Stack) -> tuple[str, int]:
    stack.worker(wait=False, inline_output_bytes=INLINE)  # the hub is ready once it is
    process = stack.hub("slowhub", slow_consumer_s=1)
    return process.url, process.pid


def memory_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def reader(url: str, request: bytes) -> socket.socket:
    """A client that sends its request, reads the response head, and then nothing more."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    host, port = url.removeprefix("http://").split(":")
    sock.connect((host, int(port)))
    sock.sendall(request)
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)  # byte by byte: nothing past the head is taken off the socket
    assert head.split(b" ", 2)[1] in (b"200", b"101"), head
    return sock


def cut(sock: socket.socket) -> bool:
    """Whether the hub closed its end of the connection (the kernel's table says, so the
    client reads nothing): it is no longer ESTABLISHED. A polite close would keep it open
    while the hub holds unsent bytes for the client."""
    client_port = sock.getsockname()[1]
    hub_port = sock.getpeername()[1]
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, remote, state = line.split()[1:4]
        ports = int(local.split(":")[1], 16), int(remote.split(":")[1], 16)
        if ports == (hub_port, client_port) and state == ESTABLISHED:
            return False
    return True


def run_big_job(url: str) -> None:
    body = {"model": "slow", "data": [[0.5] * 16] * ROWS}
    r = httpx.post(f"{url}/v1/jobs", json=body, headers={"Prefer": "wait=60"}, timeout=90)
    assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text[:300]


def sse_request(port: str) -> bytes:
    return f"GET /v1/events?model=slow HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()


def ws_request(port: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def ws_subscribe(sock: socket.socket) -> None:
    payload = b'{"type": "subscribe", "model": "slow"}'
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    sock.sendall(struct.pack("!BB", 0x81, 0x80 | len(payload)) + mask + masked)


def test_slow_sse_readers_share_one_copy_and_are_cut(hub: tuple[str, int]) -> None:
    url, pid = hub
    port = url.rsplit(":", 1)[1]
    readers = [reader(url, sse_request(port)) for _ in range(READERS)]
    try:
        before = memory_kib(pid, "VmRSS")
        run_big_job(url)
        wait_for(lambda: all(cut(s) for s in readers), timeout=30, what="the readers cut")
        grown_mib = (memory_kib(pid, "VmHWM") - before) / 1024
        event_mib = ROWS * 1024 * 10 / 2**20  # at least: 10 characters a float in JSON
        # a copy per reader would be READERS x event_mib (240 MB) at least
        assert grown_mib < READERS * event_mib / 2, f"hub grew {grown_mib:.0f} MiB"
        assert httpx.get(f"{url}/healthz").status_code == 200
    finally:
        for s in readers:
            s.close()


def test_slow_websocket_readers_are_cut(hub: tuple[str, int]) -> None:
    url, _ = hub
    port = url.rsplit(":", 1)[1]
    readers = [reader(url, ws_request(port)) for _ in range(4)]
    try:
        for sock in readers:
            ws_subscribe(sock)
        run_big_job(url)
        wait_for(lambda: all(cut(s) for s in readers), timeout=30, what="the readers cut")
        assert httpx.get(f"{url}/healthz").status_code == 200
    finally:
        for s in readers:
            s.close()
