"""Tenants, keys, tickets, origins and limits, route by route, against a real worker and Redis.

Every job belongs to the tenant that submitted it; another tenant gets exactly the answer it
would get for a job that does not exist.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import TestClient, wait_for
from redis import Redis
from stack import Stack, Worker
from starlette.websockets import WebSocketDisconnect

from contract import keys
from hub.auth import KeyRing, exposure_problem, new_key

IRIS = {"model": "iris", "data": [[5.1, 3.5, 1.4, 0.2]]}


@pytest.fixture(scope="module")
def keyfile(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    path = tmp_path_factory.mktemp("keys") / "keys.toml"
    made = {
        "acme": new_key(path, "acme", ["submit", "read"]),
        "globex": new_key(path, "globex", ["submit", "read"]),
        "acme_reader": new_key(path, "acme", ["read"]),
        "admin": new_key(path, "ops", ["admin"]),
    }
    return path, made


@pytest.fixture(scope="module")
def secure(
    stack: Stack, worker: Worker, keyfile: tuple[Path, dict[str, str]]
) -> Iterator[TestClient]:
    with stack.app(api_keys_file=keyfile[0], allowed_origins=["https://dash.example"]) as client:
        yield client


def auth(keyfile: tuple[Path, dict[str, str]], who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {keyfile[1][who]}"}


def submit(client: TestClient, headers: dict[str, str], body: dict[str, Any] = IRIS) -> str:
    r = client.post("/v1/jobs", json=body, headers={**headers, "Prefer": "wait=10"})
    assert r.status_code == 200, r.text
    return r.json()["id"]


def test_the_keys_file_holds_only_hashes(keyfile: tuple[Path, dict[str, str]]) -> None:
    text = keyfile[0].read_text()
    ring = KeyRing.load(keyfile[0])
    for key in keyfile[1].values():
        assert key not in text and key.split("_", 2)[2] not in text
        assert ring.verify(key) is not None
        assert ring.verify(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert ring.verify("ih_nope_secret") is None and ring.verify("") is None
    with pytest.raises(ValueError, match="scopes"):
        new_key(keyfile[0], "x", ["root"])


def test_no_key_or_a_wrong_key_is_401(secure: TestClient) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer ih_00000000_forged"},
        {"Authorization": "Basic x"},
    ):
        r = secure.get("/v1/jobs", headers=headers)
        assert r.status_code == 401, headers
        assert r.json()["error"]["code"] == "unauthorized"
        assert r.headers["WWW-Authenticate"] == "Bearer"
    assert secure.get("/healthz").status_code == 200  # probes need no key


def test_a_tenant_cannot_see_touch_or_follow_another_tenants_job(
    secure: TestClient, keyfile: tuple[Path, dict[str, str]]
) -> None:
    acme, globex = auth(keyfile, "acme"), auth(keyfile, "globex")
    job = submit(secure, acme)
    missing = "0" * 32
    for method, path in (
        ("GET", "/v1/jobs/{}"),
        ("GET", "/v1/jobs/{}/events"),
        ("POST", "/v1/jobs/{}/cancel"),
    ):
        theirs = secure.request(method, path.format(job), headers=globex)
        nothing = secure.request(method, path.format(missing), headers=globex)
        assert theirs.status_code == nothing.status_code == 404, path
        assert theirs.json()["error"]["code"] == nothing.json()["error"]["code"]
        assert (
            theirs.json()["error"]["message"].replace(job, missing)
            == nothing.json()["error"]["message"]
        )
    listed = secure.get("/v1/jobs", headers=globex).json()["jobs"]
    assert job not in {j["id"] for j in listed}
    assert job in {j["id"] for j in secure.get("/v1/jobs", headers=acme).json()["jobs"]}
    # the owner can follow it (the replay of a finished job closes by itself)
    mine = secure.get(f"/v1/jobs/{job}/events", headers=acme)
    assert mine.status_code == 200 and "event: succeeded" in mine.text


def test_websocket_isolation(secure: TestClient, keyfile: tuple[Path, dict[str, str]]) -> None:
    acme, globex = auth(keyfile, "acme"), auth(keyfile, "globex")
    acme_job = submit(secure, acme)
    with secure.websocket_connect("/v1/ws", headers=globex) as ws:
        ws.send_json({"type": "subscribe", "ref": 1, "job_id": acme_job})
        assert ws.receive_json()["code"] == "job_not_found"
        ws.send_json({"type": "cancel", "ref": 2, "job_id": acme_job})
        assert ws.receive_json()["code"] == "job_not_found"
        ws.send_json({"type": "subscribe", "ref": 3, "model": "iris"})
        assert ws.receive_json()["type"] == "accepted"
        other = submit(secure, acme)  # acme's events must not reach globex's model feed
        ws.send_json({"type": "submit", "ref": 4, **IRIS})
        accepted = ws.receive_json()
        assert accepted["type"] == "accepted", (accepted, other)
        mine = accepted["job"]["id"]
        seen = []
        while not any(e["job_id"] == mine and e["type"] == "succeeded" for e in seen):
            message = ws.receive_json()
            assert message["type"] == "event", message
            seen.append(message["event"])
        assert {e["job_id"] for e in seen} == {mine}
        assert other not in {e["job_id"] for e in seen}


def test_admin_sees_every_tenant(secure: TestClient, keyfile: tuple[Path, dict[str, str]]) -> None:
    acme_job = submit(secure, auth(keyfile, "acme"))
    globex_job = submit(secure, auth(keyfile, "globex"))
    admin = auth(keyfile, "admin")
    assert secure.get(f"/v1/jobs/{acme_job}", headers=admin).status_code == 200
    listed = {j["id"] for j in secure.get("/v1/jobs?limit=200", headers=admin).json()["jobs"]}
    assert {acme_job, globex_job} <= listed


def test_scopes_are_enforced(secure: TestClient, keyfile: tuple[Path, dict[str, str]]) -> None:
    reader = auth(keyfile, "acme_reader")
    r = secure.post("/v1/jobs", json=IRIS, headers=reader)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert "submit" in r.json()["error"]["message"]
    acme_job = submit(secure, auth(keyfile, "acme"))
    assert secure.get(f"/v1/jobs/{acme_job}", headers=reader).status_code == 200  # same tenant
    assert secure.post(f"/v1/jobs/{acme_job}/cancel", headers=reader).status_code == 403
    with secure.websocket_connect("/v1/ws", headers=reader) as ws:
        ws.send_json({"type": "submit", "ref": 1, **IRIS})
        assert ws.receive_json()["code"] == "forbidden"


def test_tickets_are_single_use_and_carry_the_keys_tenant(
    secure: TestClient, keyfile: tuple[Path, dict[str, str]]
) -> None:
    acme = auth(keyfile, "acme")
    job = submit(secure, acme)
    assert secure.post("/v1/tickets").status_code == 401
    ticket = secure.post("/v1/tickets", headers=acme).json()
    assert ticket["tenant"] == "acme" and ticket["expires_in"] == 60
    r = secure.get(f"/v1/jobs/{job}/events?ticket={ticket['ticket']}")
    assert r.status_code == 200 and "event: succeeded" in r.text
    again = secure.get(f"/v1/jobs/{job}/events?ticket={ticket['ticket']}")
    assert again.status_code == 401 and "used once" in again.json()["error"]["message"]
    # tickets are for the streaming routes only
    other = secure.post("/v1/tickets", headers=acme).json()["ticket"]
    assert secure.get(f"/v1/jobs/{job}?ticket={other}").status_code == 401
    ws_ticket = secure.post("/v1/tickets", headers=acme).json()["ticket"]
    with secure.websocket_connect(f"/v1/ws?ticket={ws_ticket}") as ws:
        ws.send_json({"type": "subscribe", "ref": 1, "job_id": job})
        assert ws.receive_json()["type"] == "accepted"
    with (
        pytest.raises(WebSocketDisconnect) as refused,
        secure.websocket_connect(f"/v1/ws?ticket={ws_ticket}"),
    ):
        pass
    assert refused.value.code == 1008


def test_websocket_origin_check_and_cors(
    secure: TestClient, keyfile: tuple[Path, dict[str, str]]
) -> None:
    acme = auth(keyfile, "acme")
    with (
        pytest.raises(WebSocketDisconnect) as refused,
        secure.websocket_connect("/v1/ws", headers={**acme, "Origin": "https://evil.example"}),
    ):
        pass
    assert refused.value.code == 1008
    for origin in ("https://dash.example", "http://testserver"):  # allowed, and same-origin
        with secure.websocket_connect("/v1/ws", headers={**acme, "Origin": origin}) as ws:
            ws.send_json({"type": "ping", "ref": origin})
            assert ws.receive_json() == {"type": "pong", "ref": origin}
    preflight = secure.options(
        "/v1/jobs",
        headers={
            "Origin": "https://dash.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Authorization, Content-Type",
        },
    )
    assert preflight.headers["access-control-allow-origin"] == "https://dash.example"
    evil = secure.get("/v1/jobs", headers={**acme, "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in evil.headers


def test_an_open_hub_binds_only_to_loopback(tmp_path: Path) -> None:
    open_ring = KeyRing.load(None)
    assert exposure_problem("127.0.0.1", open_ring, insecure=False) is None
    assert exposure_problem("::1", open_ring, insecure=False) is None
    assert "refusing" in (exposure_problem("0.0.0.0", open_ring, insecure=False) or "")
    assert exposure_problem("0.0.0.0", open_ring, insecure=True) is None
    keyfile = tmp_path / "keys.toml"
    new_key(keyfile, "acme", ["read"])
    assert exposure_problem("0.0.0.0", KeyRing.load(keyfile), insecure=False) is None
    cli = subprocess.run(
        [sys.executable, "-m", "cli", "serve", "--host", "0.0.0.0", "--port", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "INFERHUB_REDIS_URL": "redis://127.0.0.1:1/0"},
    )
    assert cli.returncode == 2
    assert "refusing to serve on 0.0.0.0" in cli.stdout + cli.stderr


def test_a_full_queue_answers_429_and_writes_nothing(
    stack: Stack, worker: Worker, redis: Redis, orphan_model: str
) -> None:
    queued = redis.zcard(keys.queue("nobody"))
    with stack.app(max_queued=queued + 2, wait_ready=False) as client:
        wait_for(lambda: client.get(f"/v1/models/{orphan_model}").status_code == 200)
        body = {"model": orphan_model, "data": [[5.1, 3.5, 1.4, 0.2]]}
        ids = [client.post("/v1/jobs", json=body).json()["id"] for _ in range(2)]
        before = redis.dbsize()
        r = client.post("/v1/jobs", json=body)
        assert r.status_code == 429 and r.headers["Retry-After"] == "1"
        assert r.json()["error"]["code"] == "queue_full"
        assert redis.dbsize() == before and redis.zcard(keys.queue("nobody")) == queued + 2
        for job in ids:  # leave nothing queued behind
            assert client.post(f"/v1/jobs/{job}/cancel").json()["status"] == "canceled"


def test_the_rate_limit_is_per_tenant(
    stack: Stack, worker: Worker, keyfile: tuple[Path, dict[str, str]]
) -> None:
    limited = {"api_keys_file": keyfile[0], "rate_limit_per_s": 0.5, "rate_burst": 2}
    with stack.app(**limited, wait_ready=False) as client:
        acme, globex = auth(keyfile, "acme"), auth(keyfile, "globex")
        codes = [client.post("/v1/jobs", json=IRIS, headers=acme).status_code for _ in range(3)]
        assert codes == [202, 202, 429]
        r = client.post("/v1/jobs", json=IRIS, headers=acme)
        assert r.json()["error"]["code"] == "rate_limited" and int(r.headers["Retry-After"]) >= 1
        assert client.post("/v1/jobs", json=IRIS, headers=globex).status_code == 202
