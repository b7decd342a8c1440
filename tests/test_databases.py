"""Two deployments on two databases of one Redis server stay apart. Keys are per database in
Redis, but pub/sub channels are not: the channel names carry the database's index, so that
neither side's hubs hear the other's events (nor its webhook senders the other's wake-ups)
nor its workers the other's wake-ups."""

from __future__ import annotations

from typing import Any

from helpers import TestClient
from stack import Stack, Stacks, Worker

from contract import keys

IRIS = {"model": "iris", "data": [[5.1, 3.5, 1.4, 0.2]]}


def test_channel_names_carry_the_database_and_database_0_keeps_the_plain_names() -> None:
    assert keys.events_channel("default", 0) == "inferhub:{default}:events"
    assert keys.wake("default", 0) == "inferhub:{default}:wake"
    assert keys.webhooks_wake("default", 0) == "inferhub:{default}:webhooks"
    channels = (keys.events_channel, keys.wake, keys.webhooks_wake)
    names = {channel("default", db) for channel in channels for db in range(16)}
    assert len(names) == 48


def finished(client: TestClient) -> dict[str, Any]:
    r = client.post("/v1/jobs", json=IRIS, headers={"Prefer": "wait=10"})
    assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text
    return dict(r.json())


def test_a_hub_hears_only_its_own_database(
    stack: Stack, worker: Worker, client: TestClient, stacks: Stacks
) -> None:
    with stacks("neighbour", workers=1) as neighbour, neighbour.app() as theirs:
        assert neighbour.redis_url != stack.redis_url
        with client.websocket_connect("/v1/ws") as ws:
            ws.send_json({"type": "subscribe", "ref": 1, "model": "iris"})
            assert ws.receive_json()["type"] == "accepted"
            # The neighbour's job ends before ours is submitted: one subscription reads the
            # publications in order, so had its events reached this hub they would come first.
            other = finished(theirs)
            mine = finished(client)
            seen: list[dict[str, Any]] = []
            while not seen or (seen[-1]["job_id"], seen[-1]["type"]) != (mine["id"], "succeeded"):
                message = ws.receive_json()
                assert message["type"] == "event", message
                seen.append(message["event"])
        assert [e["job_id"] for e in seen] == [mine["id"]] * 3, (other["id"], seen)
        # each side's hub and worker listen on its own channels
        # (sharded channels on Redis 7, as contract/channels.py subscribes there)
        listened = {
            name.decode()
            for name in stack.redis.execute_command("PUBSUB", "SHARDCHANNELS", "inferhub:*")
        }
        for db in (stack.db, neighbour.db):
            assert {keys.events_channel("default", db), keys.wake("default", db)} <= listened
