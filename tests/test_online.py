"""The online lane (hub/online.py, workers/online.py) across a real Redis and real workers.

The lane runs here in the test's own event loop, beside a real worker process, so that what it
holds (requests gathering, batches sent) can be looked at directly; the V2 route on top of it
is tested through HTTP in tests/test_v2.py, and once more here.

These tests use the module's own Redis database (tests/stack.py), so that no other module's jobs
or workers mix in.
"""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import signal
import socket
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import orjson
import pytest
import uvicorn
from helpers import (
    ROOT,
    TestClient,
    build_failing,
    build_slow,
    wait_for,
)
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis
from stack import Stack, Worker

from cli.processes import free_port
from contract import keys
from contract.connection import connect
from contract.errors import InferhubError
from contract.settings import Settings
from contract.tensors import pack_tensor, unpack_tensor
from hub.app import create_app
from hub.catalogue import Catalogue
from hub.fanout import Fanout
from hub.online import OnlineLane

TOPOLOGIES = ("single", "cluster")

SLOW_CONFIG = """description = "Heavy rows, and a batch that gathers for a minute while the line is full"
max_batch_size = 64
timeout_s = 60

[batching]
max_queue_delay_ms = 60000
"""


@pytest.fixture(scope="module")
def online_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("online") / "models"
    for name in ("iris", "digits"):
        shutil.copytree(ROOT / "models" / name, root / name)
    build_failing(root / "failing")
    build_slow(root / "slow")
    (root / "slow" / "config.toml").write_text(SLOW_CONFIG)
    shutil.copytree(root / "slow", root / "spare")  # the same, served by a pool of its own
    (root / "spare" / "config.toml").write_text('pool = "spare"\n' + SLOW_CONFIG)
    return root


@pytest.fixture(scope="module")
def online_settings(stack: Stack, online_models: Path) -> Settings:
    return stack.settings.model_copy(update={"models": online_models})


@pytest.fixture(scope="module")
def online_worker(stack: Stack, online_models: Path) -> Worker:
    return stack.worker("online", models=online_models)


class Lane:
    """An online lane of the test's own, with the catalogue it reads its models from."""

    def __init__(self, lane: OnlineLane, catalogue: Catalogue) -> None:
        self.lane = lane
        self.catalogue = catalogue

    async def infer(
        self, model: str, arrays: dict[str, np.ndarray], *, timeout_s: float = 30, **options: Any
    ) -> dict[str, np.ndarray]:
        entry, version = await self.catalogue.model(model)
        workers = len(await self.catalogue.serving(model))
        packed = await self.lane.infer(
            entry,
            version,
            [pack_tensor(n, a) for n, a in arrays.items()],
            rows=len(next(iter(arrays.values()))),
            outputs=options.get("outputs"),
            priority=options.get("priority", 0),
            timeout_s=timeout_s,
            workers=workers,
        )
        return {p["name"]: unpack_tensor(p) for p in packed}

    def waiting(self, model: str) -> int:
        """Requests of the model gathering in the hub, not sent yet."""
        return sum(len(q.pending) for key, q in self.lane._lines.items() if key[0] == model)


@pytest.fixture
async def lane(online_settings: Settings, online_worker: Worker) -> AsyncIterator[Lane]:
    redis = connect(online_settings.redis_url)
    online = OnlineLane(redis, max_rows_per_pool=online_settings.online_max_rows)
    fanout = Fanout(online_settings.redis_url)
    fanout.listen(online.reply_channel, online.on_reply)
    await fanout.start()
    try:
        yield Lane(online, Catalogue(redis))
    finally:
        await online.close()
        await fanout.stop()
        await redis.aclose()


def digits_rows(n: int, seed: int) -> dict[str, np.ndarray]:
    return {"input": np.random.default_rng(seed).uniform(0, 16, (n, 64)).astype(np.float32)}


def slow_rows(n: int) -> dict[str, np.ndarray]:
    return {"x": np.ones((n, 16), dtype=np.float32)}


async def test_concurrent_requests_share_batches_and_get_their_own_answers(lane: Lane) -> None:
    session = ort.InferenceSession(
        str(ROOT / "models" / "digits" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    feeds = [digits_rows(1 + i % 3, seed=i) for i in range(48)]
    before = lane.lane.batches
    answers = await asyncio.gather(*(lane.infer("digits", f) for f in feeds))
    assert lane.lane.batches - before < len(feeds)  # they were gathered into batches
    names = [o.name for o in session.get_outputs()]
    for feed, answer in zip(feeds, answers, strict=True):
        for name, expected in zip(names, session.run(None, feed), strict=True):
            assert np.array_equal(answer[name], expected), name  # bit for bit, as run alone


async def test_requests_of_one_batch_asking_different_outputs_get_their_own(lane: Lane) -> None:
    """A joined run's outputs are split among its requests as views of one buffer
    (contract.tensors.view_rows): each gets its own rows of the outputs it asked for."""
    session = ort.InferenceSession(
        str(ROOT / "models" / "digits" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    asked = [["probabilities"], ["label"], None, ["label", "probabilities"]]
    feeds = [digits_rows(1 + i % 4, seed=100 + i) for i in range(32)]
    answers = await asyncio.gather(
        *(lane.infer("digits", f, outputs=asked[i % 4]) for i, f in enumerate(feeds))
    )
    for i, (feed, answer) in enumerate(zip(feeds, answers, strict=True)):
        names = asked[i % 4] or [o.name for o in session.get_outputs()]
        assert sorted(answer) == sorted(names)
        for name in names:
            (expected,) = session.run([name], feed)
            assert np.array_equal(answer[name], expected), name  # bit for bit, as run alone


async def test_a_lone_request_is_answered_and_its_batch_leaves_nothing_behind(
    lane: Lane, redis: Redis
) -> None:
    """A request alone runs inline in the worker's batcher; the reply carries the job's end
    (workers/attempt.py ``ctx["end"]``): once answered, no queue entry or arq key is left."""
    feed = digits_rows(1, seed=99)
    session = ort.InferenceSession(
        str(ROOT / "models" / "digits" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    for _ in range(3):  # the first runs in a thread (its duration unknown), the next inline
        answer = await lane.infer("digits", feed)
        for output, expected in zip(session.get_outputs(), session.run(None, feed), strict=True):
            assert np.array_equal(answer[output.name], expected), output.name
    await _until(lambda: redis.zcard(keys.queue("default")) == 0)
    assert not list(redis.scan_iter(match="*arq:*"))  # arq's keys, under any prefix


async def test_a_bad_request_in_a_batch_fails_alone(lane: Lane) -> None:
    # ``failing`` takes one row at a time: a two-row request fails at run time, and the
    # batcher then runs the batch's requests one by one
    one = {"x": np.arange(4, dtype=np.float32).reshape(1, 4)}
    two = {"x": np.zeros((2, 4), dtype=np.float32)}
    results = await asyncio.gather(
        *(lane.infer("failing", f) for f in (one, two, one, one)), return_exceptions=True
    )
    assert isinstance(results[1], InferhubError) and results[1].status == 500, results[1]
    assert "inference failed" in results[1].message
    for result in (results[0], results[2], results[3]):
        assert isinstance(result, dict), result
        assert np.array_equal(result["y"], one["x"])


async def test_a_request_whose_rows_do_not_fit_the_others_fails_alone(lane: Lane) -> None:
    """Requests whose packed inputs match are joined as bytes (workers/online.py ``_joined``);
    one of another width keeps them from joining, and only it fails."""
    feeds = [digits_rows(2, seed=i) for i in range(6)]
    feeds[3] = {"input": np.ones((1, 63), dtype=np.float32)}
    results = await asyncio.gather(
        *(lane.infer("digits", f) for f in feeds), return_exceptions=True
    )
    assert isinstance(results[3], InferhubError), results[3]
    session = ort.InferenceSession(
        str(ROOT / "models" / "digits" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    for feed, result in zip(feeds, results, strict=True):
        if feed is not feeds[3]:
            assert isinstance(result, dict), result
            (expected,) = session.run(["probabilities"], feed)
            assert np.array_equal(result["probabilities"], expected)


async def test_a_request_that_leaves_before_its_batch_is_sent_is_not_run(lane: Lane) -> None:
    # one worker: each request is over the model's max_batch_size, so it leaves at once even
    # though the line is full; a third request gathers until a batch comes back
    first = [asyncio.ensure_future(lane.infer("slow", slow_rows(600))) for _ in range(2)]
    await _until(lambda: lane.lane.batches >= 2 and lane.waiting("slow") == 0)
    sent = lane.lane.batches
    third = asyncio.ensure_future(lane.infer("slow", slow_rows(1)))
    await _until(lambda: lane.waiting("slow") == 1)
    third.cancel()  # what the V2 route does when its client disconnects
    with pytest.raises(asyncio.CancelledError):
        await third
    assert lane.waiting("slow") == 0
    for answer in await asyncio.gather(*first):
        assert answer["y"].shape == (600, 1024)
    assert lane.lane.batches == sent  # the batches that came back sent nothing more


async def test_over_the_admission_bound_is_503_with_retry_after(
    online_settings: Settings, online_worker: Worker
) -> None:
    redis = connect(online_settings.redis_url)
    small = OnlineLane(redis, max_rows_per_pool=100)
    fanout = Fanout(online_settings.redis_url)
    fanout.listen(small.reply_channel, small.on_reply)
    await fanout.start()
    try:
        bounded = Lane(small, Catalogue(redis))
        await bounded.catalogue.serving("slow")  # read now: the calls below then never wait
        await bounded.catalogue.model("slow")
        held = asyncio.ensure_future(bounded.infer("slow", slow_rows(90)))
        # one turn of the loop: the held request takes its rows and waits for its answer,
        # which cannot come before the next call refuses (it runs without yielding)
        await asyncio.sleep(0)
        assert small.batches == 1
        with pytest.raises(InferhubError) as refused:
            await bounded.infer("slow", slow_rows(20))
        assert refused.value.status == 503 and refused.value.code == "server_busy"
        assert refused.value.headers == {"Retry-After": "1"}
        assert "INFERHUB_ONLINE_MAX_ROWS" in refused.value.message
        assert (await held)["y"].shape == (90, 1024)
        # the rows are given back with the answer: the same request now fits
        assert (await bounded.infer("slow", slow_rows(20)))["y"].shape == (20, 1024)
    finally:
        await small.close()
        await fanout.stop()
        await redis.aclose()


async def test_the_deadline_holds_while_the_batch_runs(lane: Lane) -> None:
    with pytest.raises(InferhubError) as late:
        await lane.infer("slow", slow_rows(4000), timeout_s=0.2)
    assert late.value.status == 503 and "request timeout expired" in late.value.message


async def test_a_worker_killed_mid_batch_answers_or_503s_every_request(
    transient: Stack, online_models: Path, redis: Redis, lane: Lane
) -> None:
    """Two workers of pool ``spare``, one batch at a time each; one is killed while it runs a
    batch. The reaper of the other hands the batch back once the dead worker's heartbeat
    lapses, and it runs again while its requests' deadlines allow; no request hangs."""
    spare = {"models": online_models, "pool": "spare", "max_jobs": 1, "wait": False}
    victim, _ = (transient.worker(f"spare{i}", **spare) for i in range(2))
    transient.wait_ready()
    requests = [
        asyncio.ensure_future(lane.infer("spare", slow_rows(800), timeout_s=t))
        for t in (30, 30, 30, 0.5)
    ]
    record = victim.record(redis)
    assert record is not None
    victim_id = record["id"]
    await _until(lambda: victim_id.encode() in _holders(redis))
    os.kill(victim.pid, signal.SIGKILL)
    results = await asyncio.gather(*requests, return_exceptions=True)
    for result in results:
        if isinstance(result, InferhubError):
            assert result.status == 503, result
        else:
            assert isinstance(result, dict) and result["y"].shape == (800, 1024), result
    assert all(isinstance(r, dict) for r in results[:3])  # their deadlines allowed a re-run


@pytest.mark.topologies("single")
async def test_an_answer_published_while_the_hub_is_not_subscribed_is_not_lost(
    online_settings: Settings, redis: Redis, online_worker: Worker
) -> None:
    """The hub's subscription drops while a worker runs its batch, and cannot come back (its
    Redis user is switched off) until the batch has ended: its answer was published to nobody.
    Once subscribed again, the hub sends the batch again, and the request is answered, not
    left to its deadline."""
    user, password = "online-gap-test", "online-gap-test-password"
    redis.acl_setuser(
        user,
        enabled=True,
        passwords=[f"+{password}"],
        keys=["*"],
        channels=["*"],
        commands=["+@all"],
    )
    scheme, rest = online_settings.redis_url.split("://", 1)
    redis_client = connect(online_settings.redis_url)
    online = OnlineLane(redis_client, max_rows_per_pool=online_settings.online_max_rows)
    fanout = Fanout(f"{scheme}://{user}:{password}@{rest}")
    fanout.listen(online.reply_channel, online.on_reply, online.on_gap)
    await fanout.start()
    lane = Lane(online, Catalogue(redis_client))
    try:
        request = asyncio.ensure_future(lane.infer("slow", slow_rows(3000), timeout_s=60))
        await _until(lambda: _holders(redis))  # a worker runs it
        redis.acl_setuser(user, enabled=False)  # none of its connections is let in
        redis.client_kill_filter(user=user)  # and its subscription is dropped
        await _until(lambda: not _holders(redis))  # it ran: its answer went out to nobody
        assert not request.done()
        redis.acl_setuser(user, enabled=True)
        result = await asyncio.wait_for(request, 30)  # its deadline is 60 s away
        assert result["y"].shape == (3000, 1024)
    finally:
        await online.close()
        await fanout.stop()
        await redis_client.aclose()
        redis.acl_deluser(user)


def test_v2_infer_through_the_hub(online_settings: Settings, online_worker: Worker) -> None:
    rows = digits_rows(3, seed=7)["input"]
    session = ort.InferenceSession(
        str(ROOT / "models" / "digits" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    with TestClient(create_app(online_settings)) as client:
        response = client.post(
            "/v2/models/digits/infer",
            json={
                "inputs": [
                    {"name": "input", "datatype": "FP32", "shape": [3, 64], "data": rows.tolist()}
                ],
                "outputs": [{"name": "label"}],
            },
        )
        metrics = client.get("/metrics").text
    assert response.status_code == 200, response.text
    (label,) = response.json()["outputs"]
    assert label["data"] == session.run(["label"], {"input": rows})[0].tolist()
    # visible without records: this replica's online counters
    found = _samples(metrics)
    digits = (("model", "digits"),)
    assert found["inferhub_online_requests_total", (*digits, ("outcome", "succeeded"))] == 1
    assert found["inferhub_online_rows_total", digits] == 3
    assert found["inferhub_online_batches_total", digits] == 1
    assert found["inferhub_online_request_seconds_count", digits] == 1


def test_a_v1_request_opts_in_to_the_online_lane(
    online_settings: Settings, online_worker: Worker, redis: Redis
) -> None:
    """``"lane": "online"`` (or ``?lane=online`` beside a binary body): the answer at once, as
    a finished job carries its outputs, and no job kept: no record, no event, no listing."""
    rows = digits_rows(3, seed=11)["input"]
    session = ort.InferenceSession(
        str(ROOT / "models" / "digits" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    expected = dict(
        zip(
            [o.name for o in session.get_outputs()], session.run(None, {"input": rows}), strict=True
        )
    )
    npy = io.BytesIO()
    np.save(npy, rows)
    jobs_before = set(redis.scan_iter(match=keys.job_prefix("default") + "*"))
    with TestClient(create_app(online_settings)) as client:
        answer = client.post(
            "/v1/jobs", json={"model": "digits", "data": rows.tolist(), "lane": "online"}
        )
        binary = client.post(
            "/v1/jobs",
            params={"model": "digits", "lane": "online", "outputs": "label"},
            content=npy.getvalue(),
            headers={"Content-Type": "application/x-npy"},
        )
        listed = client.get("/v1/jobs", params={"model": "digits"}).json()
        metrics = client.get("/metrics").text
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert {k: body[k] for k in ("model", "version", "lane", "status", "rows")} == {
        "model": "digits",
        "version": "1",
        "lane": "online",
        "status": "succeeded",
        "rows": 3,
    }
    assert "id" not in body and "urls" not in body and "Location" not in answer.headers
    for tensor in body["outputs"]:
        want = expected[tensor["name"]]
        assert tensor["shape"] == list(want.shape)
        got = np.array(tensor["data"], dtype=want.dtype).reshape(want.shape)
        assert np.array_equal(got, want), tensor["name"]  # bit for bit, as run alone
    assert binary.status_code == 200, binary.text
    assert [t["name"] for t in binary.json()["outputs"]] == ["label"]
    assert binary.json()["outputs"][0]["data"] == expected["label"].tolist()
    assert listed["jobs"] == []
    assert set(redis.scan_iter(match=keys.job_prefix("default") + "*")) == jobs_before
    found = _samples(metrics)
    succeeded = (("model", "digits"), ("outcome", "succeeded"))
    assert found["inferhub_online_requests_total", succeeded] == 2


def test_the_online_lane_refuses_what_only_a_job_has_a_use_for(
    online_settings: Settings, online_worker: Worker, redis: Redis
) -> None:
    """An Idempotency-Key, a webhook or stream_outputs follow a job: asked on the online lane,
    422 with what to drop, and nothing run or kept; the WebSocket's submit queues jobs only.
    A ``Prefer: wait`` sooner than the model's timeout is the request's deadline."""
    one = {"model": "digits", "data": [[0.0] * 64], "lane": "online"}
    jobs_before = set(redis.scan_iter(match=keys.job_prefix("default") + "*"))
    with TestClient(create_app(online_settings)) as client:
        lane: OnlineLane = client.app.state.service.online  # type: ignore[attr-defined]
        keyed = client.post("/v1/jobs", json=one, headers={"Idempotency-Key": "k-online"})
        hooked = client.post(
            "/v1/jobs", json={**one, "webhook": {"url": "http://127.0.0.1:9/hook"}}
        )
        streamed = client.post(
            "/v1/jobs",
            params={"model": "digits", "lane": "online", "stream_outputs": "true"},
            content=b"\x93NUMPY",
            headers={"Content-Type": "application/x-npy"},
        )
        unknown = client.post("/v1/jobs", json={**one, "lane": "fast"})
        with client.websocket_connect("/v1/ws") as ws:
            ws.send_json({"type": "submit", "ref": 1, **one})
            refused = ws.receive_json()
        sent = lane.batches
        late = client.post(
            "/v1/jobs",
            json={"model": "slow", "data": [[1.0] * 16] * 4000, "lane": "online"},
            headers={"Prefer": "wait=0.3"},
        )
    assert keyed.status_code == 422, keyed.text
    assert "Idempotency-Key" in keyed.json()["error"]["message"]
    assert hooked.status_code == 422 and "webhook" in hooked.text, hooked.text
    assert streamed.status_code == 422, streamed.text
    assert "stream_outputs" in streamed.json()["error"]["message"]
    assert unknown.status_code == 422 and "lane" in unknown.text, unknown.text
    assert refused["type"] == "error" and refused["code"] == "not_online", refused
    assert sent == 0  # none of the refused was run
    assert late.status_code == 503, late.text
    assert "request timeout expired: no answer within 0.3 s" in late.json()["error"]["message"]
    assert set(redis.scan_iter(match=keys.job_prefix("default") + "*")) == jobs_before


def _samples(metrics: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
    }


def test_v2_infer_on_its_lean_path_keeps_the_ways_of_a_route(
    online_settings: Settings, online_worker: Worker
) -> None:
    """The infer route skips FastAPI's routing and dependency solving (hub/v2/lean.py,
    hub/middleware/shortcut.py), yet is documented in /openapi.json, counted under its route
    template, echoes the request id, serves the latest version or the one in its path, and
    answers errors in Triton's shape."""
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64}]}
    versioned = "/v2/models/{model}/versions/{version}/infer"
    with TestClient(create_app(online_settings)) as client:
        schema = client.get("/openapi.json").json()
        ok = client.post(
            "/v2/models/digits/versions/1/infer", json=body, headers={"X-Request-ID": "lean-1"}
        )
        latest = client.post("/v2/models/digits/infer", json=body)
        missing = client.post("/v2/models/digits/versions/9/infer", json=body)
        malformed = client.post("/v2/models/digits/infer", content=b"{not json")
        metrics = client.get("/metrics").text
    assert "post" in schema["paths"]["/v2/models/{model}/infer"]
    parameters = schema["paths"][versioned]["post"]["parameters"]
    assert {p["name"] for p in parameters if p["in"] == "path"} == {"model", "version"}
    assert ok.status_code == 200 and ok.json()["model_version"] == "1", ok.text
    assert ok.headers["x-request-id"] == "lean-1"
    assert latest.status_code == 200 and latest.json()["model_version"] == "1"
    assert missing.status_code == 404 and "no version '9'" in missing.json()["error"]
    assert malformed.status_code == 400 and "not valid JSON" in malformed.json()["error"]
    found = _samples(metrics)
    labels = (("method", "POST"), ("route", versioned), ("status", "200"))
    assert found["inferhub_http_requests_total", labels] == 1


def test_a_client_that_disconnects_before_dispatch_is_not_run(
    online_settings: Settings, online_worker: Worker
) -> None:
    """Through HTTP: the route cancels the request when its client goes, and the request
    leaves the gathering batch (the line is full: two slow batches in flight, each over the
    model's max_batch_size)."""
    app = create_app(online_settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, timeout=20, what="uvicorn to start")
        lane: OnlineLane = app.state.service.online
        url = f"http://127.0.0.1:{port}"
        slow = [{"name": "x", "datatype": "FP32", "shape": [600, 16], "data": [1.0] * 9600}]
        with ThreadPoolExecutor(2) as pool:
            first = [
                pool.submit(
                    httpx.post, f"{url}/v2/models/slow/infer", json={"inputs": slow}, timeout=60
                )
                for _ in range(2)
            ]
            wait_for(lambda: lane.batches == 2, what="two batches in flight")
            sent = lane.batches
            body = orjson.dumps(
                {
                    "inputs": [
                        {"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [1.0] * 16}
                    ]
                }
            )
            head = (
                f"POST /v2/models/slow/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            )
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(head.encode() + body)
                wait_for(lambda: _gathering(lane) == 1, what="the request gathering")
            wait_for(lambda: _gathering(lane) == 0, what="the request to leave its batch")
            assert [f.result().status_code for f in first] == [200, 200]
        assert lane.batches == sent  # nothing more was sent: the third request never ran
    finally:
        server.should_exit = True
        thread.join(10)


def _gathering(lane: OnlineLane) -> int:
    return sum(len(line.pending) for line in lane._lines.values())


def _holders(redis: Redis) -> list[bytes]:
    """The workers holding a batch (arq's in-progress keys hold the claiming worker's id)."""
    found = list(redis.scan_iter(match=keys.PREFIX + "{*}:arq:in-progress:*"))
    held = [redis.get(key) for key in found]  # one by one: on a cluster, pools' slots differ
    return [v for v in held if v is not None]


async def _until(condition: Any) -> None:
    """Wait (30 s at most) until ``condition()``: state in Redis or in the lane, which signals
    nothing when it changes, so it is looked at every 10 ms."""
    async with asyncio.timeout(30):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
