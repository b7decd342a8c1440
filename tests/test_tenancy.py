"""What one tenant may see and hold of the hub: replays, listings, queues and streams, each
bounded per tenant, across a real worker and Redis (issue 13, items 1, 5 and 8 and minors)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import TestClient, wait_for
from stack import Stack, Worker
from starlette.websockets import WebSocketDisconnect

from hub.auth import new_key

IRIS = {"model": "iris", "data": [[5.1, 3.5, 1.4, 0.2]]}
Keys = dict[str, dict[str, str]]


@pytest.fixture(scope="module")
def tenants(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Keys]:
    path = tmp_path_factory.mktemp("tenancy") / "keys.toml"
    made = {
        name: new_key(path, name, ["submit", "read"])
        for name in ("alpha", "beta", "gamma", "delta", "epsilon")
    }
    made["admin"] = new_key(path, "ops", ["admin"])
    return path, {name: {"Authorization": f"Bearer {key}"} for name, key in made.items()}


@pytest.fixture(scope="module")
def hub(stack: Stack, worker: Worker, tenants: tuple[Path, Keys]) -> Iterator[TestClient]:
    bounded = {
        "api_keys_file": tenants[0],
        "max_queued_per_tenant": 2,
        "max_streams_per_tenant": 2,
        "ws_max_subscriptions": 2,
    }
    with stack.app(**bounded) as client:
        yield client


@pytest.fixture
def key(tenants: tuple[Path, Keys]) -> Keys:
    return tenants[1]


@pytest.fixture
def orphan(hub: TestClient, key: Keys, orphan_model: str) -> str:
    """A model whose jobs stay queued (no worker serves its pool), once this hub sees it."""
    wait_for(
        lambda: hub.get(f"/v1/models/{orphan_model}", headers=key["admin"]).status_code == 200,
        what="the hub to see the orphan model",
    )
    return orphan_model


def done(hub: TestClient, headers: dict[str, str], body: dict[str, Any] = IRIS) -> str:
    r = hub.post("/v1/jobs", json=body, headers={**headers, "Prefer": "wait=10"})
    assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text
    return r.json()["id"]


def test_a_model_replay_on_the_websocket_shows_only_the_callers_jobs(
    hub: TestClient, key: Keys
) -> None:
    """The attack: alpha runs an iris job; beta subscribes to iris from event 0 and got
    alpha's events, job ids and outputs in the replay."""
    theirs = done(hub, key["alpha"])
    mine = done(hub, key["beta"])
    with hub.websocket_connect("/v1/ws", headers=key["beta"]) as ws:
        ws.send_json({"type": "subscribe", "ref": 1, "model": "iris", "last_event_id": "0"})
        assert ws.receive_json()["type"] == "accepted"
        ws.send_json({"type": "ping", "ref": "end of replay"})
        replayed = []
        while (message := ws.receive_json())["type"] == "event":
            replayed.append(message["event"])
        assert message == {"type": "pong", "ref": "end of replay"}
    jobs = {e["job_id"] for e in replayed}
    assert mine in jobs  # the replay works: beta's own job is there, from queued to succeeded
    assert theirs not in jobs
    assert {e["type"] for e in replayed if e["job_id"] == mine} >= {"queued", "succeeded"}


def test_an_admin_replay_shows_every_tenant(hub: TestClient, key: Keys) -> None:
    theirs = done(hub, key["alpha"])
    with hub.websocket_connect("/v1/ws", headers=key["admin"]) as ws:
        ws.send_json({"type": "subscribe", "ref": 1, "job_id": theirs})
        assert ws.receive_json()["type"] == "accepted"
        types = []
        while not types or types[-1] != "succeeded":
            message = ws.receive_json()
            assert message["event"]["job_id"] == theirs
            types.append(message["event"]["type"])
        assert types[0] == "queued"


def test_the_listing_cursor_never_holds_another_tenants_job(hub: TestClient, key: Keys) -> None:
    done(hub, key["alpha"])
    page = hub.get("/v1/jobs?limit=1", headers=key["gamma"]).json()  # gamma has no jobs
    assert page == {"jobs": [], "next_cursor": None}
    # a crafted cursor pages through gamma's own index only
    crafted = f"{10**15}:{'f' * 32}"
    page = hub.get(f"/v1/jobs?limit=1&cursor={crafted}", headers=key["gamma"]).json()
    assert page == {"jobs": [], "next_cursor": None}
    mine = done(hub, key["gamma"])
    first = hub.get("/v1/jobs?limit=1", headers=key["gamma"]).json()
    assert [j["id"] for j in first["jobs"]] == [mine]
    rest = hub.get(f"/v1/jobs?limit=1&cursor={first['next_cursor']}", headers=key["gamma"])
    assert rest.json() == {"jobs": [], "next_cursor": None}
    bad = hub.get("/v1/jobs?cursor=\u0661\u0662:abc", headers=key["gamma"])
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_cursor"


def test_a_tenant_may_hold_only_its_share_of_a_queue(
    hub: TestClient, key: Keys, orphan: str
) -> None:
    """Jobs of ``orphan`` stay queued: alpha's third is refused, beta still gets in, and a
    canceled job frees its place."""
    body = {"model": orphan, "data": [[1.0, 2.0, 3.0, 4.0]]}
    queued = [hub.post("/v1/jobs", json=body, headers=key["alpha"]) for _ in range(2)]
    assert [r.status_code for r in queued] == [202, 202]
    third = hub.post("/v1/jobs", json=body, headers=key["alpha"])
    assert third.status_code == 429, third.text
    assert third.json()["error"]["code"] == "tenant_queue_full"
    assert "INFERHUB_MAX_QUEUED_PER_TENANT" in third.json()["error"]["message"]
    other = hub.post("/v1/jobs", json=body, headers=key["beta"])
    assert other.status_code == 202
    for r in (*queued, other):
        assert hub.post(f"{r.json()['urls']['cancel']}", headers=key["admin"]).status_code == 200
    again = hub.post("/v1/jobs", json=body, headers=key["alpha"])
    assert again.status_code == 202
    assert hub.post(again.json()["urls"]["cancel"], headers=key["alpha"]).status_code == 200


def test_open_streams_are_bounded_per_tenant(hub: TestClient, key: Keys) -> None:
    with (
        hub.websocket_connect("/v1/ws", headers=key["alpha"]) as one,
        hub.websocket_connect("/v1/ws", headers=key["alpha"]) as two,
    ):
        for ws in (one, two):
            ws.send_json({"type": "ping", "ref": 1})
            assert ws.receive_json()["type"] == "pong"
        with (
            pytest.raises(WebSocketDisconnect) as refused,
            hub.websocket_connect("/v1/ws", headers=key["alpha"]) as three,
        ):
            three.receive_json()
        assert refused.value.code == 1013
        assert "INFERHUB_MAX_STREAMS_PER_TENANT" in (refused.value.reason or "")
        r = hub.get("/v1/events", headers=key["alpha"])
        assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_streams"
        with hub.websocket_connect("/v1/ws", headers=key["beta"]) as theirs:  # another tenant
            theirs.send_json({"type": "ping", "ref": 2})
            assert theirs.receive_json()["type"] == "pong"
    with hub.websocket_connect("/v1/ws", headers=key["alpha"]) as freed:  # closed ones count off
        freed.send_json({"type": "ping", "ref": 3})
        assert freed.receive_json()["type"] == "pong"


def test_websocket_submits_count_against_the_subscription_limit(
    hub: TestClient, key: Keys, orphan: str
) -> None:
    body = {"model": orphan, "data": [[1.0, 2.0, 3.0, 4.0]]}
    with hub.websocket_connect("/v1/ws", headers=key["gamma"]) as ws:
        accepted = []
        for ref in (1, 2):
            ws.send_json({"type": "submit", "ref": ref, **body})
            while (message := ws.receive_json())["type"] == "event":
                pass
            assert message["type"] == "accepted", message
            accepted.append(message["job"]["id"])
        ws.send_json({"type": "submit", "ref": 3, **body})
        while (message := ws.receive_json())["type"] == "event":
            pass
        assert message["code"] == "too_many_subscriptions" and message["ref"] == 3
        ws.send_json({"type": "unsubscribe", "ref": 4, "job_id": accepted[0]})
        while (message := ws.receive_json())["type"] == "event":
            pass
        assert message == {"type": "accepted", "ref": 4}
    for job_id in accepted:
        assert hub.post(f"/v1/jobs/{job_id}/cancel", headers=key["gamma"]).status_code == 200


@pytest.mark.parametrize("event_id", ["\u0661\u0662", str(2**64), "1-" + str(2**64), "1-x"])
def test_event_ids_beyond_redis_are_refused_up_front(
    hub: TestClient, key: Keys, event_id: str
) -> None:
    job = done(hub, key["alpha"])
    r = hub.get(  # the query form: httpx sends only ASCII headers
        f"/v1/jobs/{job}/events", params={"last_event_id": event_id}, headers=key["alpha"]
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_event_id"
    with hub.websocket_connect("/v1/ws", headers=key["alpha"]) as ws:
        ws.send_json({"type": "subscribe", "ref": 1, "job_id": job, "last_event_id": event_id})
        assert ws.receive_json()["code"] == "invalid_event_id"
        ws.send_json({"type": "ping", "ref": 2})  # the socket lives on
        assert ws.receive_json()["type"] == "pong"


def test_a_repeated_idempotency_key_honours_prefer_wait(hub: TestClient, key: Keys) -> None:
    """The first submission returns at once (202); its repeat with ``Prefer: wait`` waits
    for the same job to end."""
    headers = {**key["beta"], "Idempotency-Key": "repeat-and-wait"}
    body = {"model": "slow", "data": [[0.5] * 16] * 2000}  # about 2 s of work
    first = hub.post("/v1/jobs", json=body, headers=headers)
    assert first.status_code == 202
    repeat = hub.post("/v1/jobs", json=body, headers={**headers, "Prefer": "wait=30"})
    assert repeat.status_code == 200, repeat.text
    assert repeat.json()["id"] == first.json()["id"]
    assert repeat.json()["status"] == "succeeded"


def test_a_tenant_may_store_only_its_share_of_redis(
    stack: Stack, worker: Worker, tenants: tuple[Path, Keys]
) -> None:
    """Inputs and parameters count against INFERHUB_MAX_STORED_BYTES_PER_TENANT for the jobs'
    lifetime (the attack: 25 MB of parameters per request, kept for a day)."""
    bounded = {"api_keys_file": tenants[0], "max_stored_bytes_per_tenant": 50_000}
    key = tenants[1]
    body = {**IRIS, "parameters": {"note": "x" * 10_000}}  # ~10 KB stored per job
    with stack.app(**bounded, wait_ready=False) as hub:
        answers = [hub.post("/v1/jobs", json=body, headers=key["delta"]) for _ in range(6)]
        codes = [r.status_code for r in answers]
        assert codes[:4] == [202] * 4 and codes[-1] == 429, codes
        refused = answers[-1].json()["error"]
        assert refused["code"] == "tenant_storage_full"
        assert "INFERHUB_MAX_STORED_BYTES_PER_TENANT" in refused["message"]
        assert hub.post("/v1/jobs", json=body, headers=key["epsilon"]).status_code == 202
