"""Fan-out at the speed of the wire (issue 18): each event is encoded once per transport for
all of its subscribers, found by one owner-scoped index, and written by the fan-out itself
while a stream's writer is idle.

The end-to-end test runs the hub in this process (real uvicorn, real Redis, a real worker),
so that the encodings it made can be counted; its clients are the ``websockets`` library and
httpx.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
import websockets
from helpers import wait_for
from redis.asyncio import Redis
from stack import Stack

from cli.processes import free_port
from contract.events import Event, EventType
from contract.jobstore import JobStore, Limits
from hub import frames
from hub.app import create_app
from hub.delivery import Delivery, Topic
from hub.fanout import Fanout
from hub.server import Server
from hub.wsprotocol import Inbox, WebSocketProtocol

SUBSCRIBERS = 12  # of each transport
TYPES = ["queued", "started", "succeeded"]


@pytest.fixture
def hub(stack: Stack, server: Server) -> str:
    """The hub's URL, with a worker behind it."""
    stack.first_worker()
    return f"http://127.0.0.1:{server.config.port}"


@pytest.fixture
def server(stack: Stack) -> Iterator[Server]:
    """The hub app served by uvicorn in this process (on a thread of its own, as ``inferhub
    serve`` runs it)."""
    app = create_app(stack.settings)
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, ws_per_message_deflate=False
    )
    server = Server(config, app.state.streams, grace_s=2)
    thread = threading.Thread(target=server.run, name="hub")
    thread.start()
    try:
        wait_for(lambda: server.started, timeout=30, what="the hub started")
        yield server
    finally:
        server.should_exit = True
        thread.join()


async def ws_subscriber(url: str, subscribed: asyncio.Event) -> list[str]:
    async with websockets.connect(url.replace("http", "ws") + "/v1/ws") as ws:
        await ws.send('{"type": "subscribe", "ref": 1, "model": "iris"}')
        assert orjson.loads(await ws.recv())["type"] == "accepted"
        subscribed.set()
        seen: list[str] = []
        while len(seen) < len(TYPES):
            message = orjson.loads(await ws.recv())
            if message["type"] == "event":
                seen.append(message["event"]["type"])
        return seen


async def sse_subscriber(url: str, subscribed: asyncio.Event) -> list[str]:
    async with (
        httpx.AsyncClient(timeout=30) as client,
        client.stream("GET", f"{url}/v1/events?model=iris") as response,
    ):
        assert response.status_code == 200
        seen: list[str] = []
        async for line in response.aiter_lines():
            if line.startswith(": inferhub events"):  # the stream is open: it follows the model
                subscribed.set()
            if line.startswith("data: {"):
                seen.append(orjson.loads(line[6:])["type"])
                if len(seen) == len(TYPES):
                    return seen
        return seen


async def test_one_event_to_many_subscribers_is_encoded_once_per_transport(hub: str) -> None:
    ready = [asyncio.Event() for _ in range(2 * SUBSCRIBERS)]
    clients = [
        asyncio.create_task(subscriber(hub, ready[n]))
        for n, subscriber in enumerate([ws_subscriber, sse_subscriber] * SUBSCRIBERS)
    ]
    await asyncio.gather(*(r.wait() for r in ready))
    before = frames.ENCODED.copy()
    async with httpx.AsyncClient(base_url=hub, timeout=30) as http:
        r = await http.post("/v1/jobs", json={"model": "iris", "data": [[5.1, 3.5, 1.4, 0.2]]})
        assert r.status_code == 202, r.text
    seen = await asyncio.wait_for(asyncio.gather(*clients), 60)
    assert seen == [TYPES] * (2 * SUBSCRIBERS)  # each subscriber got each event, in order
    encoded = frames.ENCODED - before
    # three events, each encoded once for all WebSocket and once for all SSE subscribers
    assert encoded == {"ws": len(TYPES), "sse": len(TYPES)}, encoded


# --- what an open WebSocket keeps (hub/wsprotocol.py) ---------------------------------------


async def test_an_open_websocket_keeps_no_handshake_headers(server: Server) -> None:
    url = f"ws://127.0.0.1:{server.config.port}/v1/ws"
    async with websockets.connect(url) as ws:
        await ws.send('{"type": "ping", "ref": 1}')  # through the protocol's inbox
        assert orjson.loads(await ws.recv()) == {"type": "pong", "ref": 1}
        [protocol] = [c for c in server.server_state.connections if c.scope["path"] == "/v1/ws"]
        assert isinstance(protocol, WebSocketProtocol)
        assert isinstance(protocol.queue, Inbox)
        assert dict(protocol.scope["headers"])[b"upgrade"] == b"websocket"  # the app's copy
        assert len(protocol.request.headers) == 0
        assert len(protocol.response.headers) == 0


async def test_inbox_hands_messages_in_order_to_its_reader() -> None:
    inbox = Inbox()
    reader = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)  # waiting
    inbox.put_nowait({"type": "websocket.receive", "text": "1"})
    inbox.put_nowait({"type": "websocket.receive", "text": "2"})
    assert (await reader)["text"] == "1"
    assert (await inbox.get())["text"] == "2"
    assert inbox.empty()


async def test_inbox_gives_the_next_reader_a_message_woken_for_a_canceled_one() -> None:
    inbox = Inbox()
    first, second = asyncio.create_task(inbox.get()), asyncio.create_task(inbox.get())
    await asyncio.sleep(0)  # both waiting
    inbox.put_nowait({"type": "websocket.disconnect", "code": 1000})  # wakes the first
    first.cancel()
    assert (await asyncio.wait_for(second, 5))["type"] == "websocket.disconnect"
    with pytest.raises(asyncio.CancelledError):
        await first
    assert inbox.empty()


# --- the index and the direct path, without a socket -----------------------------------------


def _event(n: int, owner: str, model: str = "m", type_: EventType = EventType.STARTED) -> Event:
    return Event(id=f"{n}-0", job_id=f"j{n}", type=type_, ts=0.0, model=model, owner=owner)


class Recorder:
    """A sink that takes every event at once while ``open``."""

    resume_tokens = False

    def __init__(self) -> None:
        self.open = True
        self.sent: list[Any] = []

    def ready(self) -> bool:
        return self.open

    def send(self, items: list[Any]) -> bool:
        while items and isinstance(items[0], Event):
            self.sent.append(items.pop(0))
        return False  # written at once: nothing to flush

    def flush(self) -> None:
        raise AssertionError("nothing was left to flush")


@contextlib.asynccontextmanager
async def feeds(*owners: str | None) -> AsyncIterator[tuple[Fanout, list[Delivery]]]:
    """Deliveries of ``owners`` following model ``m`` on a fan-out that is not started: the
    events are handed to ``dispatch`` by the test, and nothing reaches Redis."""
    redis = Redis.from_url("redis://127.0.0.1:1")  # never connected: live events only
    fanout = Fanout("redis://127.0.0.1:1")
    store = JobStore(redis, Limits(ttl_s=60))
    made = [Delivery(store, fanout, owner) for owner in owners]
    for feed in made:
        feed.follow("m", Topic.model("m"))
    try:
        yield fanout, made
    finally:
        for feed in made:
            feed.close()
        await fanout.redis.aclose()
        await redis.aclose()


async def test_an_event_reaches_only_its_owner_and_the_admins() -> None:
    async with feeds("a", "b", None) as (fanout, (a, b, admin)):
        fanout.dispatch(_event(1, "a"))
        fanout.dispatch(_event(2, "b"))
        fanout.dispatch(_event(3, "a", model="other"))
        assert [e.id for e in await a.batch(0)] == ["1-0"]
        assert [e.id for e in await b.batch(0)] == ["2-0"]
        assert [e.id for e in await admin.batch(0)] == ["1-0", "2-0"]
        assert fanout._targets(_event(4, "c")) == {admin.sub: None}  # the lookup itself


async def test_a_ready_sink_takes_live_events_at_once_and_a_busy_one_gets_them_in_order() -> None:
    async with feeds("a") as (fanout, (feed,)):
        sink = Recorder()
        feed.attach(sink)
        fanout.dispatch(_event(1, "a"))
        fanout.dispatch(_event(1, "a"))  # the same event again: de-duplicated, as ever
        assert [e.id for e in sink.sent] == ["1-0"]
        assert await feed.batch(0) == []  # nothing was left for the writer
        sink.open = False  # its writer is busy: the events wait for it, in order
        fanout.dispatch(_event(2, "a"))
        sink.open = True
        fanout.dispatch(_event(3, "a"))  # not past the one that waits
        assert [e.id for e in await feed.batch(0)] == ["2-0", "3-0"]
        assert [e.id for e in sink.sent] == ["1-0"]


async def test_a_job_topic_ends_when_the_sink_took_its_terminal_event() -> None:
    async with feeds("a") as (fanout, (feed,)):
        sink = Recorder()
        feed.attach(sink)
        feed.follow("job", Topic.job("j5"))
        fanout.dispatch(_event(5, "a", type_=EventType.SUCCEEDED))
        assert [e.id for e in sink.sent] == ["5-0"]
        # the sink writes events only: the end of the job is left to the writer, woken for it
        assert [type(item).__name__ for item in await feed.batch(0)] == ["Done"]
        assert "job" not in feed
