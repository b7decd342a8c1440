"""What a reconnecting event stream gets: ``204 No Content`` once a job's terminal event was
seen (the standard way to stop a browser's EventSource, which would otherwise reconnect every
second for as long as the page is open), and, for an EventSource refused for a while (429, 503),
a ``200`` stream with a ``retry:`` hint instead of a status that would close it for good."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from helpers import TestClient
from stack import Stack, Worker

from hub.client import Client

EVENT_SOURCE = {"Accept": "text/event-stream"}  # what a browser's EventSource sends


def finished_job(client: TestClient) -> str:
    r = client.post(
        "/v1/jobs",
        json={"model": "iris", "data": [[5.1, 3.5, 1.4, 0.2]]},
        headers={"Prefer": "wait=10"},
    )
    assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text
    return str(r.json()["id"])


def event_ids(body: str) -> list[str]:
    return [line.removeprefix("id: ") for line in body.splitlines() if line.startswith("id: ")]


def test_a_reconnect_after_the_terminal_event_gets_204(client: TestClient) -> None:
    job_id = finished_job(client)
    full = client.get(f"/v1/jobs/{job_id}/events", headers=EVENT_SOURCE)
    assert full.status_code == 200
    ids = event_ids(full.text)
    assert len(ids) == 3 and "event: succeeded" in full.text  # queued, started, succeeded
    terminal = ids[-1]
    again = client.get(
        f"/v1/jobs/{job_id}/events", headers={**EVENT_SOURCE, "Last-Event-ID": terminal}
    )
    assert again.status_code == 204 and again.content == b""
    # the query form of the resume point, and an id past the end, say the same
    past = f"{int(terminal.split('-')[0]) + 1}-0"
    for after in (terminal, past):
        r = client.get(f"/v1/jobs/{job_id}/events", params={"last_event_id": after})
        assert r.status_code == 204
    # a reconnect before the end still gets the rest, ending with the terminal event
    rest = client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": ids[0]})
    assert rest.status_code == 200 and event_ids(rest.text) == ids[1:]


def test_the_python_client_stops_at_a_204(client: TestClient, hub_url: str) -> None:
    job_id = finished_job(client)
    with Client(hub_url) as hub:
        events = list(hub.follow(job_id))
        assert [e["type"] for e in events] == ["queued", "started", "succeeded"]
        assert list(hub.follow(job_id, last_event_id=events[-1]["id"])) == []


@pytest.fixture(scope="module")
def one_stream(stack: Stack, worker: Worker) -> Iterator[TestClient]:
    """A hub where a tenant may hold one stream open."""
    with stack.app(max_streams_per_tenant=1) as client:
        yield client


def test_an_event_source_refused_for_a_while_is_told_when_to_come_back(
    one_stream: TestClient,
) -> None:
    job_id = finished_job(one_stream)
    with one_stream.websocket_connect("/v1/ws") as ws:  # the tenant's one stream
        ws.send_json({"type": "ping", "ref": 1})
        assert ws.receive_json()["type"] == "pong"
        plain = one_stream.get("/v1/events")  # curl, the Python client: the status itself
        assert plain.status_code == 429 and plain.json()["error"]["code"] == "too_many_streams"
        for path in ("/v1/events", f"/v1/jobs/{job_id}/events"):
            r = one_stream.get(path, headers={**EVENT_SOURCE, "Last-Event-ID": "1-0"})
            assert r.status_code == 200 and r.headers["content-type"].startswith(
                "text/event-stream"
            )
            lines = r.text.splitlines()
            assert lines[:2] == ["retry: 1000", "event: close"], lines
            assert '"code":"too_many_streams"' in lines[2]
