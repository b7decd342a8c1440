"""The hub's path of an online request, made leaner. Under uvicorn (hub/middleware/hot_path.py,
hub/wire.py ``send_whole``) a hot route's whole response leaves in one write to the socket,
head and body, with what uvicorn would have sent in two (the request id, the length,
keep-alive or close), and the request log and metrics still see its status: the hub served by
a real uvicorn, on the module's Redis database and worker, each test's connection watched by a
counting wrapper of its transport. The online lane's enqueue runs bound to its pool's keys
(contract/scripts.py ``Bound``), against the module's Redis.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import uvicorn
from helpers import wait_for
from stack import Stack, Worker

from cli.processes import free_port
from contract import keys
from contract.connection import connect, database
from hub.app import create_app
from hub.online import ENQUEUE

ROW = {
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]
}


class Counted:
    """A connection's transport, its writes kept (the rest is the transport's own)."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self.transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


@pytest.fixture(scope="module")
def served(stack: Stack, worker: Worker) -> Iterator[tuple[uvicorn.Server, int]]:
    settings = stack.settings.model_copy(update={"allowed_hosts": ["127.0.0.1"]})
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, timeout=20, what="uvicorn to start")
        yield server, port
    finally:
        server.should_exit = True
        thread.join(timeout=20)


def post(path: str, body: dict[str, Any], *extra: str) -> bytes:
    data = orjson.dumps(body)
    head = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(data)}", *extra]
    return "\r\n".join([*head, "", ""]).encode() + data


def response(sock: socket.socket) -> tuple[bytes, bytes]:
    """One response's head and body, read by its Content-Length."""
    got = b""
    while b"\r\n\r\n" not in got:
        got += sock.recv(65536)
    head, _, body = got.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head, body


def watched(server: uvicorn.Server, sock: socket.socket) -> Counted:
    """The server's end of ``sock``, whose next responses' writes are counted."""
    here = sock.getsockname()
    protocol = wait_for(
        lambda: next((c for c in server.server_state.connections if c.client == here), None),
        what="the server's end of the connection",
    )
    counted = Counted(protocol.transport)
    protocol.transport = counted  # each response's cycle takes the protocol's transport
    return counted


def test_a_hot_response_leaves_in_one_write_and_the_connection_stays_open(
    served: tuple[uvicorn.Server, int],
) -> None:
    server, port = served
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(post("/v2/models/iris/infer", ROW))
        response(sock)  # the connection is open, and known to the server
        counted = watched(server, sock)
        for n in range(2):  # on one connection: keep-alive holds
            sock.sendall(post("/v2/models/iris/infer", ROW, f"X-Request-ID: whole-{n}"))
            head, body = response(sock)
            assert head.startswith(b"HTTP/1.1 200 OK"), head
            assert f"x-request-id: whole-{n}".encode() in head
            assert orjson.loads(body)["model_name"] == "iris"
            assert counted.writes[-1] == head + b"\r\n\r\n" + body
        assert len(counted.writes) == 2


def test_an_error_and_a_closing_response_leave_whole_and_are_logged(
    served: tuple[uvicorn.Server, int],
) -> None:
    server, port = served
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(post("/v2/models/iris/infer", ROW))
        response(sock)
        counted = watched(server, sock)
        sock.sendall(post("/v2/models/nosuch/infer", ROW))
        head, body = response(sock)
        assert head.startswith(b"HTTP/1.1 404"), head
        assert "error" in orjson.loads(body)
        assert counted.writes == [head + b"\r\n\r\n" + body]
        sock.sendall(post("/v2/models/iris/infer", ROW, "Connection: close"))
        head, body = response(sock)
        assert head.startswith(b"HTTP/1.1 200 OK") and b"connection: close" in head.lower()
        assert sock.recv(1) == b""  # closed by the server once the response was written
        assert counted.writes[1:] == [head + b"\r\n\r\n" + body]
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        metrics = b""
        while chunk := sock.recv(65536):
            metrics += chunk
    assert b'route="/v2/models/{model}/infer",status="404"' in metrics
    assert b'route="/v2/models/{model}/infer",status="200"' in metrics


def test_a_bound_script_reloads_after_a_flush_and_retries_a_dropped_connection(
    stack: Stack,
) -> None:
    """ENQUEUE bound to a pool's keys, as the online lane calls it (contract/scripts.py
    ``Bound``): its command, packed once in part, does what the plain call does; a Redis that
    forgot the script has it loaded again; a connection dropped under it is opened again."""
    pool = "hubpath-bound"  # no worker serves it: each job stays queued

    async def run() -> None:
        client = connect(stack.redis_url)
        db = database(client)
        enqueue = ENQUEUE.bind(
            client,
            keys={
                "queue": keys.queue(pool),
                "parked": keys.parked(pool),
                "wake": keys.wake(pool, db),
            },
            args={
                "in_progress_prefix": keys.in_progress_prefix(pool),
                "retry_prefix": keys.retry_prefix(pool),
                "retry_ttl_s": keys.RETRY_TTL_S,
                "lease_prefix": keys.worker_lease(pool, ""),
                "handoff_prefix": keys.handoff(pool, "", db),
            },
        )
        try:

            async def queue(job: str) -> Any:
                return await enqueue(
                    keys={"job": keys.arq_job_prefix(pool) + job},
                    args={
                        "payload": b"\x00job " + job.encode(),
                        "ttl_ms": 60_000,
                        "id": job,
                        "score": 7,
                    },
                )

            await client.script_flush()
            assert await queue("first") is None  # queued, handed to no one
            with_plain = await ENQUEUE(
                client,
                keys={**enqueue.keys, "job": keys.arq_job_prefix(pool) + "plain"},
                args={
                    **enqueue.args,
                    "payload": b"\x00job plain",
                    "ttl_ms": 60_000,
                    "id": "plain",
                    "score": 7,
                },
            )
            assert with_plain is None
            own = await client.client_id()  # the pool's one connection
            killer = connect(stack.redis_url)
            assert await killer.client_kill_filter(_id=own) == 1
            await killer.aclose()
            assert await queue("second") is None
            assert await client.zrange(keys.queue(pool), 0, -1, withscores=True) == [
                (b"first", 7.0),
                (b"plain", 7.0),
                (b"second", 7.0),
            ]
            assert await client.get(keys.arq_job_prefix(pool) + "second") == b"\x00job second"
            with pytest.raises(TypeError):
                await enqueue(keys={}, args={"payload": b"", "ttl_ms": 1, "id": "x", "score": 1})
        finally:
            await client.delete(
                keys.queue(pool),
                *(keys.arq_job_prefix(pool) + j for j in ("first", "plain", "second")),
            )
            await client.aclose()

    asyncio.run(run())


def test_a_body_that_comes_in_parts_is_read_whole(served: tuple[uvicorn.Server, int]) -> None:
    """A hot route reads its body without starlette's stream (hub/bodies.py ``whole``): a
    body in chunks, each its own message of uvicorn's, is the request all the same."""
    _, port = served
    data = orjson.dumps(ROW)
    head = "POST /v2/models/iris/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked"
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(head.encode() + b"\r\n\r\n")
        for part in (data[:7], data[7:40], data[40:]):
            sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))
        sock.sendall(b"0\r\n\r\n")
        head_bytes, body = response(sock)
    assert head_bytes.startswith(b"HTTP/1.1 200 OK"), head_bytes
    assert orjson.loads(body)["model_name"] == "iris"
