"""Real-time delivery across real processes: Redis, a worker, and hub processes run by the CLI.

SSE needs real servers (httpx's ASGI transport buffers a streamed response), so every hub here
is ``inferhub serve`` on its own port, on a Redis of the module's own (a test restarts it).
Two of them share one job stream, seen through either; a third has a tiny buffer and a short
slow-consumer limit.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import websockets
from helpers import scrape, value, wait_for, wait_job
from httpx_sse import connect_sse
from redis import Redis
from stack import Hub, Stack, Stacks

from cli.processes import ready
from contract.events import Event, EventType
from hub.subscription import SlowConsumer, Subscription

TOPOLOGIES = ("single", "cluster")


@pytest.fixture(scope="module")
def stack(stacks: Stacks, topology: str) -> Iterator[Stack]:
    """A Redis of the module's own (append-only: a test restarts it) or the cluster, a
    worker, and hubs ``a`` and ``b`` and ``tiny`` (a tiny buffer and a short slow-consumer
    limit)."""
    single = topology == "single"
    with stacks("realtime", own_redis=single, persistent=single, topology=topology) as made:
        # outputs inline in their events whatever their size (an operator's choice): the slow
        # consumer tests need events that fill the sockets
        made.worker(wait=False, inline_output_bytes=2**26)
        made.hub("a", wait=False)
        made.hub("b", wait=False)
        made.hub("tiny", wait=False, subscriber_buffer=4, slow_consumer_s=1)
        made.wait_ready()
        yield made


def address(stack: Stack, name: str) -> str:
    """The base URL of the stack's hub ``name``."""
    hub = stack.named(name)
    assert isinstance(hub, Hub)
    return hub.url


def submit(url: str, model: str, rows: int, width: int) -> str:
    body = {"model": model, "data": [[0.5] * width] * rows}
    r = httpx.post(f"{url}/v1/jobs", json=body, timeout=30)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def sse(url: str, path: str, *, limit: int | None = None, **headers: str) -> list[dict[str, Any]]:
    """Read an SSE stream until it closes (or ``limit`` events), as event dicts."""
    out: list[dict[str, Any]] = []
    with (
        httpx.Client(timeout=httpx.Timeout(30, read=30)) as client,
        connect_sse(client, "GET", f"{url}{path}", headers=headers) as source,
    ):
        assert source.response.status_code == 200
        for message in source.iter_sse():
            if not message.data:
                continue
            event = orjson.loads(message.data)
            assert message.id == event.get("id", message.id)
            assert message.event == event.get("type", message.event)
            out.append({"sse_event": message.event, **event})
            if limit is not None and len(out) >= limit:
                break
    return out


def check_sequence(events: list[dict[str, Any]], rows: int, chunk: int) -> None:
    """queued, started, progress (done = chunk, 2 chunk, ... rows), succeeded; ids increasing."""
    types = [e["type"] for e in events]
    chunks = -(-rows // chunk)
    progress = ["progress"] * chunks if rows > chunk else []
    assert types == ["queued", "started", *progress, "succeeded"]
    done = [e["data"]["done"] for e in events if e["type"] == "progress"]
    assert done == [min(rows, chunk * (i + 1)) for i in range(len(progress))]
    ids = [tuple(map(int, e["id"].split("-"))) for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


# --- SSE -------------------------------------------------------------------------------------


def test_sse_single_job_replays_and_closes(stack: Stack) -> None:
    job = submit(address(stack, "a"), "iris", 1, 4)
    events = sse(address(stack, "a"), f"/v1/jobs/{job}/events")
    check_sequence(events, rows=1, chunk=256)
    outputs = {o["name"]: o for o in events[-1]["data"]["outputs"]}
    assert outputs["label"]["shape"] == [1] and outputs["probabilities"]["shape"] == [1, 3]


def test_sse_bulk_job_progress_in_order(stack: Stack) -> None:
    job = submit(address(stack, "a"), "slow", 20, 16)  # slow: max_batch_size 2 -> 10 chunks
    check_sequence(sse(address(stack, "a"), f"/v1/jobs/{job}/events"), rows=20, chunk=2)


def test_sse_resume_mid_stream_gets_exactly_the_rest(stack: Stack) -> None:
    url = address(stack, "a")
    job = submit(url, "slow", 40, 16)
    first = sse(url, f"/v1/jobs/{job}/events", limit=4)
    rest = sse(url, f"/v1/jobs/{job}/events", **{"Last-Event-ID": first[-1]["id"]})
    check_sequence(first + rest, rows=40, chunk=2)
    assert sse(url, f"/v1/jobs/{job}/events") == first + rest  # the same, replayed whole


def test_sse_resume_after_the_job_finished(stack: Stack) -> None:
    url = address(stack, "b")
    job = submit(url, "slow", 10, 16)
    everything = sse(url, f"/v1/jobs/{job}/events")
    k = 3
    by_query = sse(url, f"/v1/jobs/{job}/events?last_event_id={everything[k - 1]['id']}")
    assert by_query == everything[k:]
    after_end = httpx.get(
        f"{url}/v1/jobs/{job}/events", headers={"Last-Event-ID": everything[-1]["id"]}
    )
    assert after_end.status_code == 204  # nothing more will come (an EventSource stops there)


def test_submit_through_one_hub_follow_through_the_other(stack: Stack) -> None:
    job = submit(address(stack, "a"), "slow", 12, 16)
    check_sequence(sse(address(stack, "b"), f"/v1/jobs/{job}/events"), rows=12, chunk=2)


def test_sse_errors(stack: Stack) -> None:
    url = address(stack, "a")
    assert httpx.get(f"{url}/v1/jobs/nope/events").status_code == 404
    job = submit(url, "iris", 1, 4)
    r = httpx.get(f"{url}/v1/jobs/{job}/events", headers={"Last-Event-ID": "yesterday"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_event_id"


def test_all_jobs_feed_filters_and_resumes(stack: Stack) -> None:
    url = address(stack, "b")
    seen: list[dict[str, Any]] = []
    # Start the feed after the last event so far: whenever its subscription begins, the log
    # covers everything since, so the test does not race the jobs against the subscription.
    mark = sse(url, f"/v1/jobs/{submit(url, 'digits', 1, 64)}/events")[-1]["id"]

    def read_feed() -> None:
        with (
            httpx.Client(timeout=30) as client,
            connect_sse(
                client, "GET", f"{url}/v1/events?model=iris", headers={"Last-Event-ID": mark}
            ) as source,
        ):
            for message in source.iter_sse():
                if message.data:
                    seen.append(orjson.loads(message.data))
                    if sum(e["type"] == "succeeded" for e in seen) == 2:
                        return

    reader = threading.Thread(target=read_feed)
    reader.start()
    jobs = [submit(address(stack, "a"), "iris", 1, 4), submit(address(stack, "a"), "digits", 1, 64)]
    jobs.append(submit(address(stack, "a"), "iris", 2, 4))
    reader.join(30)
    assert not reader.is_alive()
    assert {e["job_id"] for e in seen} == {jobs[0], jobs[2]}  # the digits job is filtered out
    assert all(e["model"] == "iris" for e in seen)
    for job in (jobs[0], jobs[2]):
        assert [e["type"] for e in seen if e["job_id"] == job] == ["queued", "started", "succeeded"]
    # resume after the first event: exactly the later iris events
    resumed = []
    with (
        httpx.Client(timeout=30) as client,
        connect_sse(
            client, "GET", f"{url}/v1/events?model=iris", headers={"Last-Event-ID": seen[0]["id"]}
        ) as source,
    ):
        for message in source.iter_sse():
            if message.data:
                resumed.append(orjson.loads(message.data))
            if len(resumed) == len(seen) - 1:
                break
    assert [e["id"] for e in resumed] == [e["id"] for e in seen[1:]]


def test_all_jobs_feed_resets_when_the_log_no_longer_holds_the_id(stack: Stack) -> None:
    with (
        httpx.Client(timeout=30) as client,
        connect_sse(
            client, "GET", f"{address(stack, 'a')}/v1/events", headers={"Last-Event-ID": "1-0"}
        ) as source,
    ):
        first = next(m for m in source.iter_sse() if m.data)
    assert first.event == "reset"
    assert "reload" in orjson.loads(first.data)["reason"]


# --- WebSocket -------------------------------------------------------------------------------


def ws_url(url: str) -> str:
    return url.replace("http://", "ws://") + "/v1/ws"


async def _recv(ws: Any) -> dict[str, Any]:
    return orjson.loads(await asyncio.wait_for(ws.recv(), 30))


async def _events_until_terminal(ws: Any, job: str) -> list[dict[str, Any]]:
    out = []
    while True:
        message = await _recv(ws)
        if message["type"] == "event" and message["event"]["job_id"] == job:
            out.append(message["event"])
            if message["event"]["type"] in ("succeeded", "failed", "canceled"):
                return out


def test_ws_submit_streams_the_job_and_resumes_on_a_new_socket(stack: Stack) -> None:
    async def run() -> None:
        async with websockets.connect(ws_url(address(stack, "a"))) as ws:
            await ws.send(
                orjson.dumps(
                    {"type": "submit", "ref": 7, "model": "slow", "data": [[0.1] * 16] * 30}
                ).decode()
            )
            accepted = await _recv(ws)
            assert accepted["type"] == "accepted" and accepted["ref"] == 7
            job = accepted["job"]["id"]
            first = []
            while len(first) < 5:
                message = await _recv(ws)
                assert message["type"] == "event"
                first.append(message["event"])
        # the socket is gone; another, on the other hub, resumes after the 5th event
        async with websockets.connect(ws_url(address(stack, "b"))) as ws:
            await ws.send(
                orjson.dumps(
                    {
                        "type": "subscribe",
                        "ref": "r",
                        "job_id": job,
                        "last_event_id": first[-1]["id"],
                    }
                ).decode()
            )
            assert (await _recv(ws))["type"] == "accepted"
            rest = await _events_until_terminal(ws, job)
        check_sequence(first + rest, rows=30, chunk=2)

    asyncio.run(run())


def test_ws_model_subscription_and_cancel(stack: Stack) -> None:
    async def run() -> None:
        async with websockets.connect(ws_url(address(stack, "b"))) as ws:
            await ws.send('{"type": "subscribe", "ref": 1, "model": "slow"}')
            assert (await _recv(ws))["subscription"] == {"model": "slow"}
            job = submit(address(stack, "a"), "slow", 400, 16)
            while True:
                message = await _recv(ws)
                if message["type"] == "event" and message["event"]["type"] == "progress":
                    break
            await ws.send(orjson.dumps({"type": "cancel", "ref": 2, "job_id": job}).decode())
            events = await _events_until_terminal(ws, job)
            assert events[-1]["type"] == "canceled"
            assert events[-1]["data"]["done"] < 400

    asyncio.run(run())


def test_ws_bad_input_gets_error_frames_and_the_socket_stays_open(stack: Stack) -> None:
    async def run() -> None:
        async with websockets.connect(ws_url(address(stack, "a"))) as ws:
            cases = {
                "not json": "invalid_json",
                "[1, 2]": "invalid_message",
                '{"type": "dance", "ref": 1}': "unknown_type",
                '{"ref": 2}': "unknown_type",
                '{"type": "subscribe", "ref": 3}': "invalid_request",
                '{"type": "subscribe", "ref": 4, "job_id": "nope"}': "job_not_found",
                '{"type": "submit", "ref": 5, "model": "nope", "data": [[1]]}': "model_not_found",
                '{"type": "submit", "ref": 6, "model": "iris", "data": [[1, 2]]}': "invalid_input",
                '{"type": "submit", "ref": 7}': "invalid_request",
                '{"type": "cancel", "ref": 8}': "invalid_request",
                '{"type": "unsubscribe", "ref": 9, "job_id": "x"}': "not_subscribed",
                '{"type": "subscribe", "ref": 10, "model": "iris", "last_event_id": "x"}': "invalid_event_id",
            }
            for frame, code in cases.items():
                await ws.send(frame)
                reply = await _recv(ws)
                assert reply["type"] == "error" and reply["code"] == code, (frame, reply)
                assert reply["message"]
            await ws.send(b"\x00binary")
            assert (await _recv(ws))["code"] == "binary_frame"
            await ws.send('{"type": "ping", "ref": "still here"}')
            assert await _recv(ws) == {"type": "pong", "ref": "still here"}
            # a frame over INFERHUB_WS_MAX_MESSAGE_BYTES (1 MiB) closes the socket with 1009
            await ws.send('{"type": "ping", "pad": "' + "x" * (1024 * 1024 + 10) + '"}')
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await _recv(ws)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009

    asyncio.run(run())
    assert httpx.get(f"{address(stack, 'a')}/healthz").status_code == 200  # the hub still serves


def test_ws_stuck_consumer_is_closed(stack: Stack) -> None:
    """A client that stops reading: the hub (buffer 4, limit 1 s) gives up on it, sends 1013
    with a reason, and cuts the connection when even that is not read within the limit."""
    tiny, a = address(stack, "tiny"), address(stack, "a")

    def open_sockets() -> float:
        return value(scrape(tiny), "inferhub_websocket_connections")

    async def run() -> list[str]:
        async with websockets.connect(ws_url(tiny), max_queue=1, max_size=None) as ws:
            await ws.send('{"type": "subscribe", "ref": 1, "model": "slow"}')
            assert (await _recv(ws))["type"] == "accepted"
            assert open_sockets() == 1
            # big outputs (rows x 1024 floats) fill the socket buffers while we do not read
            jobs = [submit(a, "slow", 200, 16) for _ in range(6)]
            await asyncio.to_thread(
                wait_for, lambda: open_sockets() == 0, timeout=30, what="the hub to drop us"
            )
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    await _recv(ws)
            if closed.value.rcvd is not None:  # the close frame got through before the cut
                assert closed.value.rcvd.code == 1013
                assert "slow" in closed.value.rcvd.reason or "reading" in closed.value.rcvd.reason
        return jobs

    jobs = asyncio.run(run())
    with httpx.Client(base_url=a, timeout=10) as http:  # the jobs themselves are unaffected
        for job in jobs:
            assert wait_job(http, job, {"succeeded", "failed", "canceled"})["status"] == "succeeded"


# --- slow consumers, unit ---------------------------------------------------------------------


def _event(job: str, type_: EventType, n: int) -> Event:
    return Event(
        id=f"{n}-0", job_id=job, type=type_, ts=0.0, model="m", owner="o", data={"done": n}
    )


def test_full_buffer_coalesces_progress_and_keeps_every_other_event() -> None:
    async def run() -> None:
        sub = Subscription(lambda _: True, maxsize=2, stuck_after_s=60)
        sub.put(_event("j", EventType.STARTED, 1))
        sub.put(_event("j", EventType.PROGRESS, 2))
        for n in range(3, 10):  # full: each newer progress replaces the waiting one
            sub.put(_event("j", EventType.PROGRESS, n))
        sub.put(_event("j", EventType.SUCCEEDED, 10))
        got = [await sub.get(0) for _ in range(3)]
        assert [(e.type, e.data["done"]) for e in got] == [
            (EventType.STARTED, 1),
            (EventType.PROGRESS, 9),
            (EventType.SUCCEEDED, 10),
        ]
        assert sub.coalesced == 7
        assert await sub.get(0) is None

    asyncio.run(run())


# --- Redis restarted under an open stream ----------------------------------------------------


@pytest.mark.topologies("single")  # the stack's own Redis, restarted
def test_redis_restart_under_an_open_stream_loses_nothing(stack: Stack) -> None:
    url = address(stack, "a")
    job = submit(url, "slow", 300, 16)
    events: list[dict[str, Any]] = []
    with (
        httpx.Client(timeout=httpx.Timeout(60, read=60)) as client,
        connect_sse(client, "GET", f"{url}/v1/jobs/{job}/events") as source,
    ):
        for message in source.iter_sse():
            if not message.data:
                continue
            events.append(orjson.loads(message.data))
            if len(events) == 6:
                stack.server.restart()  # type: ignore[union-attr]
            if events[-1]["type"] in ("succeeded", "failed", "canceled"):
                break
    check_sequence(events, rows=300, chunk=2)
    # and the hub and worker are ready again by themselves
    wait_for(lambda: ready(url), timeout=30, what="readyz after the restart")
    assert Redis.from_url(stack.redis_url).ping()


def test_ws_resubscribing_to_several_models_replays_each_of_them(stack: Stack) -> None:
    """One socket, two model subscriptions resumed from the same id: both replays arrive whole."""
    url = address(stack, "a")
    mark = sse(url, f"/v1/jobs/{submit(url, 'iris', 1, 4)}/events")[-1]["id"]
    digits = submit(url, "digits", 1, 64)
    iris = submit(url, "iris", 1, 4)
    for job in (digits, iris):
        sse(url, f"/v1/jobs/{job}/events")  # both have ended

    async def run() -> dict[str, list[str]]:
        seen: dict[str, list[str]] = {digits: [], iris: []}
        async with websockets.connect(ws_url(url)) as ws:
            for ref, model in enumerate(("iris", "digits")):
                await ws.send(
                    orjson.dumps(
                        {"type": "subscribe", "ref": ref, "model": model, "last_event_id": mark}
                    ).decode()
                )
            while len(seen[digits]) < 3 or len(seen[iris]) < 3:
                message = await _recv(ws)
                if message["type"] == "event" and message["event"]["job_id"] in seen:
                    seen[message["event"]["job_id"]].append(message["event"]["type"])
        return seen

    seen = asyncio.run(run())
    assert seen == {job: ["queued", "started", "succeeded"] for job in (digits, iris)}


def test_a_stuck_subscriber_holds_no_more_and_is_told_at_its_next_read() -> None:
    async def run() -> None:
        sub = Subscription(lambda _: True, maxsize=2, stuck_after_s=60)
        for n in range(100):  # far past 4 x maxsize: it is stuck, and what follows is dropped
            sub.put(_event(f"j{n}", EventType.SUCCEEDED, n))
        assert len(sub._buffer) <= 4 * 2 + 2 and sub.dropped > 80  # bounded
        with pytest.raises(SlowConsumer, match="resume from the last event id"):
            await sub.get(0)

    asyncio.run(run())
