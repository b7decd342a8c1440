"""``hub.client``: every method of ``Client`` and ``AsyncClient`` against a real hub process
(SSE needs a real server), the same table of cases through both, so the two stay alike."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import aclosing
from typing import Any

import pytest
from helpers import wait_for

from hub.client import AsyncClient, Client, HubError, SSEParser

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
JOB = "<the finished job>"  # stands for the id of the ``done`` fixture's job in the tables


class Driver:
    """One client kind behind plain calls, so that one test body runs through both."""

    def __init__(self, kind: str, url: str) -> None:
        self.kind, self.url = kind, url

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self.kind == "sync":
            with Client(self.url) as hub:
                return getattr(hub, method)(*args, **kwargs)

        async def run() -> Any:
            async with AsyncClient(self.url) as hub:
                return await getattr(hub, method)(*args, **kwargs)

        return asyncio.run(run())

    def events(
        self,
        method: str,
        *args: Any,
        until: Callable[[dict[str, Any]], bool] = lambda _: False,
        **kwargs: Any,
    ) -> list[dict[str, Any]]:
        """The stream's items until it ends or one satisfies ``until``."""
        seen: list[dict[str, Any]] = []
        if self.kind == "sync":
            with Client(self.url) as hub:
                for event in getattr(hub, method)(*args, **kwargs):
                    seen.append(event)
                    if until(event):
                        break
            return seen

        async def run() -> None:
            async with (
                AsyncClient(self.url) as hub,
                aclosing(getattr(hub, method)(*args, **kwargs)) as stream,
            ):
                async for event in stream:
                    seen.append(event)
                    if until(event):
                        break

        asyncio.run(run())
        return seen


@pytest.fixture(params=["sync", "async"])
def hub(request: pytest.FixtureRequest, hub_url: str) -> Driver:
    return Driver(request.param, hub_url)


@pytest.fixture(scope="module")
def done(hub_url: str) -> dict[str, Any]:
    """A finished iris job (after another one, so that a listing has two pages), and its events
    as the plain sync client read them."""
    with Client(hub_url) as client:
        client.submit("iris", ROWS, wait=10)
        job = client.submit("iris", ROWS, wait=10)
        assert job["status"] == "succeeded", job
        return {"job": job, "events": list(client.follow(job["id"]))}


def _fill(values: Any, done: dict[str, Any]) -> Any:
    """The table's arguments with ``JOB`` made real."""
    if isinstance(values, dict):
        return {k: _fill(v, done) for k, v in values.items()}
    if isinstance(values, list | tuple):
        return type(values)(_fill(v, done) for v in values)
    return done["job"]["id"] if values == JOB else values


IRIS_INPUT = [
    {"name": "input", "datatype": "FP32", "shape": [2, 4], "data": [x for row in ROWS for x in row]}
]

# method, args, kwargs, what the answer must satisfy
CALLS = [
    pytest.param(
        "models", (), {}, lambda r: {"iris", "digits"} <= {m["name"] for m in r}, id="models"
    ),
    pytest.param("model", ("iris",), {}, lambda r: r["name"] == "iris" and r["ready"], id="model"),
    pytest.param(  # stopped workers of other tests show too, without a pool
        "workers",
        (),
        {},
        lambda r: any(w["alive"] for w in r) and all(w["pool"] for w in r if w["alive"]),
        id="workers",
    ),
    pytest.param(
        "job", (JOB,), {}, lambda r: r["status"] == "succeeded" and r["rows"] == 2, id="job"
    ),
    pytest.param(
        "outputs",
        (JOB,),
        {"rows": (1, 2)},
        lambda r: r[0]["name"] == "label" and r[0]["data"] == [2],
        id="outputs-rows",
    ),
    pytest.param(
        "jobs",
        (),
        {"model": "iris", "status": "succeeded", "limit": 1},
        lambda r: len(r["jobs"]) == 1 and r["jobs"][0]["model"] == "iris" and r["next_cursor"],
        id="jobs-filtered",
    ),
    pytest.param(
        "submit",
        ("iris", ROWS),
        {"wait": 10},
        lambda r: r["status"] == "succeeded" and r["outputs"][0]["data"] == [0, 2],
        id="submit-wait",
    ),
    pytest.param(
        "submit",
        ("iris",),
        {"inputs": IRIS_INPUT, "outputs": ["label"], "wait": 10},
        lambda r: [o["name"] for o in r["outputs"]] == ["label"],
        id="submit-inputs-outputs",
    ),
    pytest.param(
        "submit",
        ("iris", ROWS),
        {"priority": 100},
        lambda r: r["status"] == "queued",
        id="submit-priority-nowait",
    ),
    pytest.param("infer", ("iris", ROWS), {}, lambda r: r[0]["data"] == [0, 2], id="infer"),
    pytest.param(
        "infer",
        ("iris",),
        {"inputs": IRIS_INPUT, "outputs": ["probabilities"], "timeout": 10},
        lambda r: [(o["name"], o["shape"]) for o in r] == [("probabilities", [2, 3])],
        id="infer-inputs-outputs",
    ),
]


@pytest.mark.parametrize(("method", "args", "kwargs", "check"), CALLS)
def test_each_method_answers(
    hub: Driver, done: dict[str, Any], method: str, args: tuple, kwargs: dict, check: Callable
) -> None:
    result = hub.call(method, *_fill(args, done), **_fill(kwargs, done))
    assert check(result), result


# method, args, kwargs, status, code: each a mistake the hub refuses
ERRORS = [
    pytest.param("model", ("nope",), {}, 404, "model_not_found", id="unknown-model"),
    pytest.param("submit", ("nope", ROWS), {}, 404, "model_not_found", id="submit-unknown-model"),
    pytest.param("job", ("nope",), {}, 404, "job_not_found", id="unknown-job"),
    pytest.param("job", ("../models",), {}, 404, "not_found", id="id-cannot-change-route"),
    pytest.param("cancel", (JOB,), {}, 409, "job_finished", id="cancel-finished"),
    pytest.param("submit", ("iris", [[1.0]]), {}, 422, "invalid_input", id="wrong-shape"),
    pytest.param("infer", ("iris", [[1.0]]), {}, 422, "invalid_input", id="infer-wrong-shape"),
    pytest.param("infer", ("nope", ROWS), {}, 404, "model_not_found", id="infer-unknown-model"),
    pytest.param(
        "submit", ("iris", ROWS), {"priority": 101}, 422, "invalid_request", id="priority"
    ),
    pytest.param("jobs", (), {"status": "bogus"}, 422, "invalid_request", id="jobs-bad-status"),
    pytest.param("jobs", (), {"cursor": "garbage"}, 400, "invalid_cursor", id="jobs-bad-cursor"),
    pytest.param("follow", ("nope",), {}, 404, "job_not_found", id="follow-unknown"),
    pytest.param(
        "follow", (JOB,), {"last_event_id": "x"}, 400, "invalid_event_id", id="follow-bad-id"
    ),
    pytest.param("watch", (), {"last_event_id": "x"}, 400, "invalid_event_id", id="watch-bad-id"),
]


@pytest.mark.parametrize(("method", "args", "kwargs", "status", "code"), ERRORS)
def test_errors_are_hub_errors_with_status_and_code(
    hub: Driver,
    done: dict[str, Any],
    method: str,
    args: tuple,
    kwargs: dict,
    status: int,
    code: str,
) -> None:
    send = hub.events if method in ("follow", "watch") else hub.call
    with pytest.raises(HubError) as caught:
        send(method, *_fill(args, done), **_fill(kwargs, done))
    assert (caught.value.status, caught.value.code) == (status, code), caught.value


# answers that do not change between two calls: the two clients must give equal ones
SAME = [
    pytest.param("model", ("iris",), {}, id="model"),
    pytest.param("job", (JOB,), {}, id="job"),
    pytest.param("jobs", (), {"model": "iris", "status": "succeeded", "limit": 2}, id="jobs"),
]


@pytest.mark.parametrize(("method", "args", "kwargs"), SAME)
def test_both_clients_give_the_same_answer(
    hub_url: str, done: dict[str, Any], method: str, args: tuple, kwargs: dict
) -> None:
    sync, async_ = (
        Driver(kind, hub_url).call(method, *_fill(args, done), **_fill(kwargs, done))
        for kind in ("sync", "async")
    )
    assert sync == async_


def test_jobs_pages_follow_the_cursor(hub: Driver, done: dict[str, Any]) -> None:
    both = hub.call("jobs", model="iris", status="succeeded", limit=2)["jobs"]
    first = hub.call("jobs", model="iris", status="succeeded", limit=1)
    second = hub.call(
        "jobs", model="iris", status="succeeded", limit=1, cursor=first["next_cursor"]
    )
    assert [j["id"] for j in first["jobs"] + second["jobs"]] == [j["id"] for j in both]


def test_idempotency_key_gives_the_same_job_and_refuses_another_body(hub: Driver) -> None:
    key = f"test-client-{hub.kind}"
    first = hub.call("submit", "iris", ROWS, idempotency_key=key, wait=10)
    again = hub.call("submit", "iris", ROWS, idempotency_key=key)
    assert again["id"] == first["id"]
    with pytest.raises(HubError) as caught:
        hub.call("submit", "iris", ROWS[:1], idempotency_key=key)
    assert caught.value.status == 409


def test_cancel_a_queued_job(hub: Driver, orphan_model: str) -> None:
    def known() -> bool:  # the hub reads the catalogue at most once a second
        try:
            return bool(hub.call("model", orphan_model))
        except HubError:
            return False

    wait_for(known, what="the hub to know the orphan model")
    job = hub.call("submit", orphan_model, ROWS)  # no worker serves it: it stays queued
    assert hub.call("cancel", job["id"])["status"] == "canceled"
    assert hub.call("job", job["id"])["status"] == "canceled"


def test_follow_a_running_job_to_its_end(hub: Driver) -> None:
    job = hub.call("submit", "slow", [[0.5] * 16] * 4)  # 2 rows a chunk: 2 progress events
    events = hub.events("follow", job["id"])
    types = [e["type"] for e in events]
    assert types[-1] == "succeeded" and types.count("progress") == 2, types
    assert {e["job_id"] for e in events} == {job["id"]}


def test_follow_resumes_after_last_event_id(hub: Driver, done: dict[str, Any]) -> None:
    events = done["events"]
    assert len(events) >= 3, events
    for k in range(len(events) - 1):
        later = hub.events("follow", done["job"]["id"], last_event_id=events[k]["id"])
        assert [e["id"] for e in later] == [e["id"] for e in events[k + 1 :]]
    assert hub.events("follow", done["job"]["id"]) == events  # both clients read the same


def test_watch_resumes_with_filters(hub: Driver, done: dict[str, Any]) -> None:
    events, job_id = done["events"], done["job"]["id"]
    seen = hub.events(
        "watch",
        ["iris"],
        events[0]["id"],
        job_ids=[job_id],
        until=lambda e: e["type"] == "succeeded",
    )
    assert seen == events[1:]


def test_async_session_submits_over_the_websocket(hub_url: str) -> None:
    async def run() -> list[str]:
        async with AsyncClient(hub_url) as client, await client.session() as session:
            job = await session.submit("iris", ROWS)
            types = []
            async for message in session.messages():
                if message["type"] == "event" and message["event"]["job_id"] == job["id"]:
                    types.append(message["event"]["type"])
                    if types[-1] == "succeeded":
                        return types
        raise AssertionError("the socket closed before the job ended")

    assert asyncio.run(run())[-1] == "succeeded"


# lines of an event stream, and the (event, data, id) of each message they make
SSE = [
    pytest.param([": ping", "retry: 1000", ""], [], id="comment-and-retry-only"),
    pytest.param(
        ["id: 1-0", "event: queued", "data: {}", ""], [("queued", ["{}"], "1-0")], id="event"
    ),
    pytest.param(
        ["data: a", "data:b", "", "data: c", ""],
        [("message", ["a", "b"], None), ("message", ["c"], None)],
        id="multiline-and-no-space",
    ),
    pytest.param(["event: reset", "data: {}", ""], [("reset", ["{}"], None)], id="no-id"),
    pytest.param(["data: cut"], [], id="unfinished-message-is-not-given"),
]


@pytest.mark.parametrize(("lines", "messages"), SSE)
def test_sse_parser(lines: list[str], messages: list[tuple[str, list[str], str | None]]) -> None:
    parser = SSEParser()
    parsed = [m for m in map(parser.feed, lines) if m is not None]
    assert [(m.event, m.data, m.id) for m in parsed] == messages
