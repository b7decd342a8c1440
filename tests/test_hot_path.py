"""The hot routes' one layer (hub/middleware/hot_path.py): V2 infer and a JSON ``POST /v1/jobs``
skip the four middlewares of the usual chain, and still get what each of them does: the
request id, the Host check, the drain's refusal, the body limit; with CORS on, a request with
an ``Origin`` takes the chain and gets its CORS headers. The app with its lifespan, the
module's Redis database and worker.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest
from helpers import TestClient
from stack import Stack, Worker
from starlette.types import Receive, Scope, Send

from hub.app import create_app
from hub.middleware.drain import Streams
from hub.middleware.hot_path import HotPath

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


class _Failing:
    """A hot route whose endpoint fails with an error no handler answers (a bug)."""

    def path_parameters(self, scope: Scope) -> dict[str, Any] | None:
        return {} if scope["path"] == "/boom" else None

    def shortcut(self) -> Callable[[Scope, Receive, Send], Coroutine[Any, Any, None]]:
        async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
            raise RuntimeError("a bug")

        return asgi


def test_an_error_no_route_answered_gets_a_500_as_fastapis_error_layer_sends() -> None:
    """HotPath sits outside FastAPI's own layers (hub/app.py), so it answers such an error
    itself; the error still reaches the server (its log), and the request's access line and
    metrics say 500. HotPath alone, around a bare inner app: its logic, isolated."""
    seen: list[int] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError("the hot route is served ahead of the inner app")

    hot = HotPath(
        inner,
        routes=[_Failing()],
        observe=lambda scope, status, seconds: seen.append(status),
        allowed_hosts=["localhost"],
        keyless=True,
        streams=Streams(),
        max_body_bytes=LIMIT,
        cors=False,
    )

    async def app(scope: Scope, receive: Receive, send: Send) -> None:  # an ASGI 3 function
        await hot(scope, receive, send)

    client = TestClient(app, raise_server_exceptions=False)  # no lifespan: the inner app has none
    response = client.post("/boom", content=b"{}", headers=LOCAL)
    assert response.status_code == 500 and response.text == "Internal Server Error"
    assert response.headers["x-request-id"]
    assert seen == [500]
