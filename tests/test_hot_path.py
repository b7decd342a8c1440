"""The hot routes' one layer (hub/middleware/hot_path.py): V2 infer and a JSON ``POST /v1/jobs``
skip the four middlewares of the usual chain, and still get what each of them does: the
request id, the Host check, the drain's refusal, the body limit; with CORS on, a request with
an ``Origin`` takes the chain and gets its CORS headers. The app with its lifespan, the
module's Redis database and worker.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from helpers import TestClient
from stack import Stack, Worker

from hub.app import create_app

LIMIT = 64 * 1024
ROW = {
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]
}
INFER = "/v2/models/iris/infer"
LOCAL = {"Host": "localhost"}


@pytest.fixture(scope="module")
def hub(stack: Stack, worker: Worker) -> Iterator[TestClient]:
    settings = stack.settings.model_copy(
        update={"max_body_bytes": LIMIT, "allowed_origins": ["https://app.example"]}
    )
    with TestClient(create_app(settings)) as client:
        yield client


def test_a_hot_request_gets_its_request_id_and_metrics(hub: TestClient) -> None:
    given = hub.post(INFER, json=ROW, headers={**LOCAL, "X-Request-ID": "hot-1"})
    assert given.status_code == 200, given.text
    assert given.headers["x-request-id"] == "hot-1"
    trace = "0af7651916cd43dd8448eb211c80319c"
    traced = hub.post(
        INFER, json=ROW, headers={**LOCAL, "traceparent": f"00-{trace}-b7ad6b7169203331-01"}
    )
    assert traced.headers["x-request-id"] == trace
    made = hub.post(INFER, json=ROW, headers=LOCAL).headers["x-request-id"]
    assert len(made) == 32 and made != trace
    metrics = hub.get("/metrics", headers=LOCAL).text
    assert 'route="/v2/models/{model}/infer",status="200"' in metrics


@pytest.mark.parametrize("path", [INFER, "/v1/jobs"])
def test_a_hot_request_to_a_host_not_allowed_is_refused(hub: TestClient, path: str) -> None:
    body = ROW if path == INFER else {"model": "iris", "data": [[5.1, 3.5, 1.4, 0.2]]}
    refused = hub.post(path, json=body, headers={"Host": "evil.example"})
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "host_not_allowed"
    assert refused.headers["x-request-id"]


def test_a_hot_request_over_the_body_limit_is_413_declared_or_streamed(hub: TestClient) -> None:
    big = b"[" + b"0.0," * LIMIT + b"0.0]"
    declared = hub.post(INFER, content=big, headers={**LOCAL, "Content-Type": "application/json"})
    assert declared.status_code == 413 and "over" in declared.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: sent chunked
        for start in range(0, len(big), 8192):
            yield big[start : start + 8192]

    streamed = hub.post(
        INFER, content=chunks(), headers={**LOCAL, "Content-Type": "application/json"}
    )
    assert streamed.status_code == 413 and "over" in streamed.json()["error"]
    jobs = hub.post("/v1/jobs", content=big, headers={**LOCAL, "Content-Type": "application/json"})
    assert jobs.status_code == 413 and jobs.json()["error"]["code"] == "body_too_large"


def test_with_cors_on_a_hot_request_with_an_origin_gets_the_cors_headers(hub: TestClient) -> None:
    response = hub.post(INFER, json=ROW, headers={**LOCAL, "Origin": "https://app.example"})
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == "https://app.example"
    assert response.headers["x-request-id"]


def test_once_the_shutdown_began_a_hot_request_is_refused_with_503(
    stack: Stack, worker: Worker
) -> None:
    with TestClient(create_app(stack.settings)) as client:
        client.app.state.streams.closing = True  # type: ignore[attr-defined]
        refused = client.post(INFER, json=ROW, headers=LOCAL)
        client.app.state.streams.closing = False  # type: ignore[attr-defined]
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.headers["connection"] == "close"
    assert refused.json()["error"]["code"] == "shutting_down"
