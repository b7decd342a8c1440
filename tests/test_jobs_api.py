"""The jobs API end to end: the hub app (TestClient), a real arq worker, Redis, onnxruntime."""

from __future__ import annotations

import io
import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from helpers import (
    ROOT,
    TestClient,
    job_events,
    stream_id,
    wait_for,
    wait_idle,
    wait_job,
)
from redis import Redis
from sklearn.datasets import load_digits, load_iris
from stack import Stack, Worker

from cli.processes import free_port
from contract import keys
from contract.settings import Settings
from hub.api import jobs as jobs_api
from hub.app import create_app

FINISHED = {"succeeded", "failed", "canceled"}
TOPOLOGIES = ("single", "cluster")


def local_run(path: Path, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The same model run in the test process, for the expected outputs."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def output(job: dict[str, Any], name: str) -> np.ndarray:
    (tensor,) = [o for o in job["outputs"] if o["name"] == name]
    return np.asarray(tensor["data"]).reshape(tensor["shape"])


def assert_error(response: Any, status: int, code: str, *fragments: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    message = body["error"]["message"]
    assert isinstance(message, str) and message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def snapshot(redis: Redis) -> dict[str, Any]:
    """Everything a request could have written: not what workers keep on their own clock
    (heartbeats, which expire, and the statistics they flush on a heartbeat after earlier jobs)."""
    workers_own = (
        keys.worker("").encode(),
        b"inferhub:stats:",
        keys.worker_lease("default", "").encode(),
    )
    all_keys = {k for k in redis.scan_iter(count=1000) if not k.startswith(workers_own)}
    return {
        "keys": all_keys,
        "jobs": redis.zcard(keys.jobs_index("default")),
        "log": redis.xlen(keys.events_log("default")),
        "queue": redis.zcard(keys.queue("default")),
    }


@pytest.fixture
def unchanged(redis: Redis, client: TestClient) -> Iterator[None]:
    """Asserts that the test's requests wrote nothing to Redis."""
    wait_idle(redis)
    before = snapshot(redis)
    yield
    assert snapshot(redis) == before


@pytest.fixture(scope="module")
def digits_rows() -> np.ndarray:
    return load_digits().data[:6].astype(np.float32)


@pytest.fixture(scope="module")
def digits_expected(digits_rows: np.ndarray) -> list[np.ndarray]:
    return local_run(ROOT / "models" / "digits" / "1" / "model.onnx", {"input": digits_rows})


def submit(client: TestClient, body: dict[str, Any], **headers: str) -> Any:
    return client.post("/v1/jobs", json=body, headers=headers)


# --- one prediction ----------------------------------------------------------------------------


def assert_digits_outputs(job: dict[str, Any], expected: list[np.ndarray]) -> None:
    labels, probabilities = expected
    assert [o["name"] for o in job["outputs"]] == ["label", "probabilities"]
    assert job["outputs"][0]["datatype"] == "INT64"
    assert job["outputs"][1]["datatype"] == "FP32"
    assert output(job, "label").tolist() == labels.tolist()
    got = output(job, "probabilities").astype(np.float32)
    assert got.shape == probabilities.shape
    np.testing.assert_allclose(got, probabilities, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-5)


def test_digits_data_with_prefer_wait_returns_outputs_inline(
    client: TestClient, digits_rows: np.ndarray, digits_expected: list[np.ndarray]
) -> None:
    r = submit(client, {"model": "digits", "data": digits_rows.tolist()}, Prefer="wait=10")
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["status"] == "succeeded"
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["rows"] == len(digits_rows)
    assert job["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [6, 64]}]
    assert job["error"] is None
    assert job["created_at"] <= job["started_at"] <= job["finished_at"]
    assert_digits_outputs(job, digits_expected)
    # a real onnxruntime ran real digits: most of them are recognised
    assert (output(job, "label") == load_digits().target[:6]).sum() >= 5


def test_small_outputs_are_held_by_the_record_alone(
    client: TestClient, redis: Redis, digits_rows: np.ndarray, digits_expected: list[np.ndarray]
) -> None:
    """Outputs small enough to ride in the record get no key of their own; the outputs URL
    serves them from the record (JSON, rows, .npy)."""
    job = submit(client, {"model": "digits", "data": digits_rows.tolist()}, Prefer="wait=10").json()
    assert job["status"] == "succeeded"
    assert redis.exists(keys.job_outputs(job["id"])) == 0
    served = client.get(job["urls"]["outputs"]).json()
    assert_digits_outputs(served, digits_expected)
    rows = client.get(job["urls"]["outputs"], params={"rows": "2:4"}).json()
    assert_digits_outputs(rows, [a[2:4] for a in digits_expected])
    npy = client.get(job["urls"]["outputs"], params={"format": "npy", "output": "label"})
    assert np.load(io.BytesIO(npy.content)).tolist() == digits_expected[0].tolist()


def test_digits_v2_inputs_form(
    client: TestClient, digits_rows: np.ndarray, digits_expected: list[np.ndarray]
) -> None:
    body = {
        "model": "digits",
        "version": "1",
        "inputs": [
            {
                "name": "input",
                "datatype": "FP32",
                "shape": list(digits_rows.shape),
                "data": digits_rows.reshape(-1).tolist(),
            }
        ],
    }
    r = submit(client, body, Prefer="wait=10")
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["status"] == "succeeded"
    assert job["version"] == "1"
    assert_digits_outputs(job, digits_expected)


def test_outputs_selects_the_outputs_returned(
    client: TestClient, digits_rows: np.ndarray, digits_expected: list[np.ndarray]
) -> None:
    body = {"model": "digits", "data": digits_rows[:2].tolist(), "outputs": ["probabilities"]}
    r = submit(client, body, Prefer="wait=10")
    assert r.status_code == 200, r.text
    job = r.json()
    assert [o["name"] for o in job["outputs"]] == ["probabilities"]
    np.testing.assert_allclose(
        output(job, "probabilities"), digits_expected[1][:2], rtol=1e-5, atol=1e-7
    )


def test_single_row_without_batch_dimension(client: TestClient) -> None:
    row = load_iris().data[0].astype(np.float32)
    r = submit(client, {"model": "iris", "data": row.tolist()}, Prefer="wait=10")
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [1, 4]}]
    expected = local_run(ROOT / "models" / "iris" / "1" / "model.onnx", {"input": row[None]})
    assert output(job, "label").tolist() == expected[0].tolist() == [0]


def test_two_inputs_model(client: TestClient) -> None:
    body = {
        "model": "pair",
        "inputs": [
            {"name": "b", "data": [[10, 20], [30, 40]]},
            {"name": "a", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3, 4]},
        ],
    }
    r = submit(client, body, Prefer="wait=10")
    assert r.status_code == 200, r.text
    assert r.json()["outputs"] == [
        {"name": "sum", "datatype": "FP32", "shape": [2, 2], "data": [11.0, 22.0, 33.0, 44.0]}
    ]


def test_without_prefer_202_then_job_succeeds(
    client: TestClient, digits_rows: np.ndarray, digits_expected: list[np.ndarray]
) -> None:
    r = submit(client, {"model": "digits", "data": digits_rows.tolist()})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "queued"
    assert job["outputs"] is None
    assert r.headers["location"] == f"/v1/jobs/{job['id']}" == job["urls"]["self"]
    done = wait_job(client, job["id"], FINISHED)
    assert done["status"] == "succeeded"
    assert done["attempt"] == 1
    assert_digits_outputs(done, digits_expected)


# --- bulk jobs, progress and the event log ---------------------------------------------------


def slow_rows(n: int, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 8, (n, 16)).astype(np.float32)


def test_bulk_job_event_stream_in_order(client: TestClient, redis: Redis, model_repo: Path) -> None:
    rows = slow_rows(40)
    r = submit(client, {"model": "slow", "data": rows.tolist()})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    job = wait_job(client, job_id, FINISHED)
    assert job["status"] == "succeeded", job
    assert job["progress"] == {"done": 40, "total": 40}

    events = job_events(redis, job_id)
    types = [e.type.value for e in events]
    assert types == ["queued", "started"] + ["progress"] * 20 + ["succeeded"]
    progress = [e.data for e in events if e.type == "progress"]
    assert [p["done"] for p in progress] == list(range(2, 41, 2))
    assert {p["total"] for p in progress} == {40}
    ids = [stream_id(e.id) for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert {(e.job_id, e.model, e.owner) for e in events} == {(job_id, "slow", "anonymous")}
    assert events[1].data["attempt"] == 1
    # the pool's log holds each event under the same id
    for event in (events[0], events[-1]):
        ((log_id, body),) = redis.xrange(keys.events_log("default"), event.id, event.id)
        assert log_id.decode() == event.id
        assert body[b"e"] == redis.xrange(keys.job_events(job_id), event.id, event.id)[0][1][b"e"]

    # 20 chunks of 2 rows give the same numbers as one run of 40
    (expected,) = local_run(model_repo / "slow" / "1" / "model.onnx", {"x": rows})
    # 40 x 1024 floats are over INFERHUB_INLINE_OUTPUT_BYTES: the job has their summary and URL
    assert job["outputs"] is None
    assert job["outputs_summary"] == [
        {"name": "y", "datatype": "FP32", "shape": [40, 1024], "bytes": 40 * 1024 * 4}
    ]
    stored = client.get(job["urls"]["outputs"]).json()
    np.testing.assert_allclose(output(stored, "y"), expected, rtol=1e-4, atol=1e-4)


def test_cancel_running_bulk_job(client: TestClient, redis: Redis) -> None:
    total = 4000
    r = submit(client, {"model": "slow", "data": slow_rows(total).tolist()})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]

    def running() -> dict | None:
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] in ("queued", "started"), job
        return job if job["status"] == "started" and job["progress"] else None

    wait_for(running, what="progress of the bulk job")
    r = client.post(f"/v1/jobs/{job_id}/cancel")
    assert r.status_code == 200, r.text
    assert r.json()["status"] in ("started", "canceled")  # a running job stops at its next chunk

    job = wait_job(client, job_id, FINISHED)
    assert job["status"] == "canceled"
    assert job["outputs"] is None
    assert 0 < job["progress"]["done"] < total
    assert job["created_at"] <= job["started_at"] <= job["finished_at"] <= time.time()

    events = job_events(redis, job_id)
    assert events[-1].type == "canceled"
    assert events[-1].data["done"] == job["progress"]["done"]
    types = [e.type.value for e in events]
    assert types[:2] == ["queued", "started"]
    assert set(types[2:-1]) == {"progress"}
    assert "succeeded" not in types

    r = client.post(f"/v1/jobs/{job_id}/cancel")
    assert_error(r, 409, "job_finished", "already canceled")


def test_cancel_queued_job_never_runs(client: TestClient, redis: Redis, orphan_model: str) -> None:
    wait_for(
        lambda: client.get(f"/v1/models/{orphan_model}").status_code == 200,
        what="the hub to see the orphan model",
    )
    # no worker takes it: a short Prefer: wait ends with the job still queued
    r = submit(client, {"model": orphan_model, "data": [[5.1, 3.5, 1.4, 0.2]]}, Prefer="wait=0.2")
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "queued"
    job_id = r.json()["id"]
    assert redis.zscore(keys.queue("nobody"), job_id) is not None
    assert redis.exists(keys.arq_job_prefix("nobody") + job_id)

    r = client.post(f"/v1/jobs/{job_id}/cancel")
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["status"] == "canceled"
    assert job["started_at"] is None
    assert job["created_at"] <= job["finished_at"] <= time.time()  # unix seconds, like the rest
    # taken off the queue: no worker of that pool will ever see it
    assert redis.zscore(keys.queue("nobody"), job_id) is None
    assert not redis.exists(keys.arq_job_prefix("nobody") + job_id)
    assert [e.type.value for e in job_events(redis, job_id)] == ["queued", "canceled"]

    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "canceled"
    assert_error(client.post(f"/v1/jobs/{job_id}/cancel"), 409, "job_finished", job_id)
    assert [e.type.value for e in job_events(redis, job_id)] == ["queued", "canceled"]


# --- failures inside the model ---------------------------------------------------------------


def test_failing_inference_fails_the_job_and_the_worker_keeps_serving(
    client: TestClient, redis: Redis, model_repo: Path
) -> None:
    rows = np.arange(8, dtype=np.float32).reshape(2, 4)
    with pytest.raises(Exception) as raised:  # what onnxruntime itself says
        local_run(model_repo / "failing" / "1" / "model.onnx", {"x": rows})
    reason = str(raised.value)
    assert "Reshape" in reason

    r = submit(client, {"model": "failing", "data": rows.tolist()}, Prefer="wait=10")
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["status"] == "failed"
    assert job["outputs"] is None
    assert "cannot be reshaped to the requested shape" in job["error"]
    assert reason.strip() in job["error"]
    events = job_events(redis, job["id"])
    assert [e.type.value for e in events] == ["queued", "started", "failed"]
    assert events[-1].data["error"] == job["error"]

    r = submit(client, {"model": "failing", "data": [[1, 2, 3, 4]]}, Prefer="wait=10")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "succeeded"
    assert r.json()["outputs"][0]["data"] == [1.0, 2.0, 3.0, 4.0]


# --- idempotency -------------------------------------------------------------------------------


def test_same_idempotency_key_and_body_give_the_same_job(client: TestClient, redis: Redis) -> None:
    body = {"model": "iris", "data": [[6.3, 3.3, 6.0, 2.5]]}
    jobs_before = redis.zcard(keys.jobs_index("default"))
    first = submit(client, body, **{"Idempotency-Key": "order-17"})
    assert first.status_code == 202, first.text
    job_id = first.json()["id"]
    wait_job(client, job_id, FINISHED)

    again = submit(client, body, **{"Idempotency-Key": "order-17"})
    assert again.status_code == 200, again.text  # the same job, already finished
    assert again.json()["id"] == job_id
    assert again.json()["status"] == "succeeded"
    assert redis.zcard(keys.jobs_index("default")) == jobs_before + 1
    listed = client.get("/v1/jobs", params={"model": "iris", "limit": 500}).json()["jobs"]
    assert [j["id"] for j in listed].count(job_id) == 1
    assert len(job_events(redis, job_id)) == 3  # queued, started, succeeded: it ran once


def test_same_idempotency_key_with_another_body_is_409(client: TestClient, redis: Redis) -> None:
    r = submit(
        client, {"model": "iris", "data": [[5.0, 3.0, 1.6, 0.2]]}, **{"Idempotency-Key": "k-409"}
    )
    assert r.status_code == 202, r.text
    wait_job(client, r.json()["id"], FINISHED)
    wait_idle(redis)
    before = snapshot(redis)
    r = submit(
        client, {"model": "iris", "data": [[5.0, 3.0, 1.6, 0.3]]}, **{"Idempotency-Key": "k-409"}
    )
    assert_error(r, 409, "idempotency_conflict", "Idempotency-Key")
    assert snapshot(redis) == before


# --- rejected requests: the right status and code, and nothing written -----------------------

DIGIT_ROW = [0.0] * 64

BAD_REQUESTS = {
    "unknown_model": (
        {"model": "nope", "data": [DIGIT_ROW]},
        404,
        "model_not_found",
        ["model 'nope'"],
    ),
    "unknown_version": (
        {"model": "digits", "version": "9", "data": [DIGIT_ROW]},
        404,
        "version_not_found",
        ["'9'", "it has 1"],
    ),
    "wrong_input_name": (
        {"model": "digits", "inputs": [{"name": "pixels", "data": [DIGIT_ROW]}]},
        422,
        "invalid_input",
        ["'pixels'", "its inputs are input"],
    ),
    "wrong_datatype": (
        {"model": "digits", "inputs": [{"name": "input", "datatype": "INT64", "data": [[0] * 64]}]},
        422,
        "invalid_input",
        ["INT64", "FP32"],
    ),
    "unknown_datatype": (
        {
            "model": "digits",
            "inputs": [{"name": "input", "datatype": "FLOAT", "data": [DIGIT_ROW]}],
        },
        422,
        "invalid_input",
        ["FLOAT"],
    ),
    "wrong_shape": (
        {"model": "digits", "data": [[1.0, 2.0, 3.0]]},
        422,
        "invalid_input",
        ["[1, 3]", "[-1, 64]"],
    ),
    "shape_disagrees_with_data": (
        {"model": "digits", "inputs": [{"name": "input", "shape": [2, 64], "data": DIGIT_ROW}]},
        422,
        "invalid_input",
        ["[2, 64]", "128 elements", "has 64"],
    ),
    "not_numbers": (
        {"model": "digits", "data": [["a"] * 64]},
        422,
        "invalid_input",
        ["not FP32"],
    ),
    "no_rows": (
        {"model": "digits", "inputs": [{"name": "input", "shape": [0, 64], "data": []}]},
        422,
        "invalid_input",
        ["no rows"],
    ),
    "inputs_disagree_on_rows": (
        {
            "model": "pair",
            "inputs": [
                {"name": "a", "data": [[1, 2], [3, 4]]},
                {"name": "b", "data": [[1, 2], [3, 4], [5, 6]]},
            ],
        },
        422,
        "invalid_input",
        ["disagree on the number of rows", "[2, 3]"],
    ),
    "input_missing": (
        {"model": "pair", "inputs": [{"name": "a", "data": [[1, 2]]}]},
        422,
        "invalid_input",
        ["'b' is missing"],
    ),
    "input_twice": (
        {
            "model": "pair",
            "inputs": [{"name": "a", "data": [[1, 2]]}, {"name": "a", "data": [[1, 2]]}],
        },
        422,
        "invalid_input",
        ["'a' is given twice"],
    ),
    "data_for_two_inputs": (
        {"model": "pair", "data": [[1, 2]]},
        422,
        "invalid_input",
        ["2 inputs", "'inputs'"],
    ),
    "unknown_output": (
        {"model": "digits", "data": [DIGIT_ROW], "outputs": ["scores"]},
        422,
        "invalid_input",
        ["'scores'", "label, probabilities"],
    ),
    "both_inputs_and_data": (
        {
            "model": "digits",
            "data": [DIGIT_ROW],
            "inputs": [{"name": "input", "data": [DIGIT_ROW]}],
        },
        422,
        "invalid_request",
        ["either 'inputs'", "or 'data'"],
    ),
    "neither_inputs_nor_data": ({"model": "digits"}, 422, "invalid_request", ["either 'inputs'"]),
    "unknown_field": (
        {"model": "digits", "data": [DIGIT_ROW], "rows": 1},
        422,
        "invalid_request",
        ["rows"],
    ),
    "priority_out_of_range": (
        {"model": "digits", "data": [DIGIT_ROW], "priority": 1000},
        422,
        "invalid_request",
        ["priority"],
    ),
    "model_missing": ({"data": [DIGIT_ROW]}, 422, "invalid_request", ["model"]),
    "body_not_an_object": ([1, 2, 3], 422, "invalid_request", []),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
@pytest.mark.usefixtures("unchanged")
def test_rejected_submission(client: TestClient, case: str) -> None:
    body, status, code, fragments = BAD_REQUESTS[case]
    r = submit(client, body, Prefer="wait=5", **{"Idempotency-Key": f"bad-{case}"})
    assert_error(r, status, code, *fragments)


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
@pytest.mark.usefixtures("unchanged")
def test_rejected_submission_answered_alike_past_the_routing_or_through_it(
    client: TestClient, case: str
) -> None:
    """A JSON submission without a query takes the shortcut (SubmitRoute); a query that
    changes nothing for a JSON body sends it through FastAPI's routing and dependencies."""
    body = BAD_REQUESTS[case][0]
    short = client.post("/v1/jobs", json=body, headers={"Prefer": "wait=5"})
    routed = client.post("/v1/jobs?stream_outputs=false", json=body, headers={"Prefer": "wait=5"})
    assert (short.status_code, short.json()) == (routed.status_code, routed.json())


@pytest.mark.parametrize(
    ("method", "path", "headers", "taken"),
    [
        ("POST", "/v1/jobs", {}, True),
        ("POST", "/v1/jobs", {"idempotency-key": "k" * 200, "prefer": "wait=5"}, True),
        ("POST", "/v1/jobs?model=digits", {}, False),
        ("POST", "/v1/jobs", {"content-type": "application/x-npy"}, False),
        ("POST", "/v1/jobs", {"inference-header-content-length": "10"}, False),
        ("POST", "/v1/jobs", {"idempotency-key": "k" * 201}, False),  # FastAPI says why
        ("GET", "/v1/jobs", {}, False),
        ("POST", "/v1/jobs/x/cancel", {}, False),
    ],
    ids=[
        "json",
        "json, headers within bounds",
        "a query",
        "an npy body",
        "a V2 binary body",
        "an idempotency key over its bound",
        "a listing",
        "another route",
    ],
)
def test_which_submissions_take_the_shortcut(
    method: str, path: str, headers: dict[str, str], taken: bool
) -> None:
    route = next(r for r in jobs_api.router.routes if isinstance(r, jobs_api.SubmitRoute))
    bare, _, query = path.partition("?")
    scope = {
        "type": "http",
        "method": method,
        "path": bare,
        "query_string": query.encode(),
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
    }
    assert (route.path_parameters(scope) is not None) is taken


@pytest.mark.usefixtures("unchanged")
def test_malformed_json_is_400(client: TestClient) -> None:
    r = client.post(
        "/v1/jobs",
        content=b'{"model": "digits", "data": [[1, 2',
        headers={"Content-Type": "application/json"},
    )
    assert_error(r, 400, "malformed_json", "not valid JSON")


@pytest.mark.usefixtures("unchanged")
def test_unknown_job_is_404(client: TestClient) -> None:
    assert_error(client.get("/v1/jobs/no-such-job"), 404, "job_not_found", "'no-such-job'")
    assert_error(client.post("/v1/jobs/no-such-job/cancel"), 404, "job_not_found", "'no-such-job'")


@pytest.mark.usefixtures("unchanged")
def test_unknown_route_and_method_use_the_error_shape(client: TestClient) -> None:
    assert_error(client.get("/v1/nothing-here"), 404, "not_found")
    assert_error(client.delete("/v1/jobs"), 405, "method_not_allowed")


@pytest.fixture(scope="module")
def small_client(stack: Stack, worker: Worker) -> Iterator[TestClient]:
    with stack.app(max_body_bytes=1000, wait_ready=False) as c:
        yield c


@pytest.mark.usefixtures("unchanged")
def test_body_over_the_limit_is_413(small_client: TestClient) -> None:
    body = {"model": "digits", "data": [DIGIT_ROW] * 10}  # about 2.6 kB
    r = submit(small_client, body)
    assert_error(r, 413, "body_too_large", "1000 bytes")


@pytest.mark.usefixtures("unchanged")
def test_streamed_body_over_the_limit_is_413(small_client: TestClient) -> None:
    chunks = [b'{"model": "digits", "data": [', *[b"[" + b"0.0, " * 63 + b"0.0], "] * 10, b"[]]}"]
    r = small_client.post(
        "/v1/jobs", content=iter(chunks), headers={"Content-Type": "application/json"}
    )
    assert "content-length" not in {k.lower() for k in r.request.headers}
    assert_error(r, 413, "body_too_large", "1000 bytes")


def test_body_under_the_limit_passes(small_client: TestClient) -> None:
    r = submit(small_client, {"model": "iris", "data": [[5.1, 3.5, 1.4, 0.2]]}, Prefer="wait=10")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "succeeded"


# --- Redis down --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def down_client(model_repo: Path) -> Iterator[TestClient]:
    """A hub whose Redis does not answer: nothing listens on its port."""
    settings = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", models=model_repo)
    with TestClient(create_app(settings)) as c:
        yield c


def test_redis_down_gives_503(down_client: TestClient) -> None:
    r = down_client.post("/v1/jobs", json={"model": "iris", "data": [[5.1, 3.5, 1.4, 0.2]]})
    assert_error(r, 503, "redis_unavailable", "retry")
    assert r.headers["retry-after"] == "1"
    assert_error(down_client.get("/v1/jobs/abc"), 503, "redis_unavailable")
    assert_error(down_client.get("/v1/jobs"), 503, "redis_unavailable")
    assert_error(down_client.get("/v1/models"), 503, "redis_unavailable")
    ready = down_client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["ready"] is False
    assert "redis unreachable" in ready.json()["reason"]
    assert down_client.get("/healthz").status_code == 200


# --- models, workers, health ---------------------------------------------------------------------


SERVED = ["breast_cancer", "digits", "failing", "iris", "pair", "slow"]


def test_models_list_with_signatures(client: TestClient, worker: Worker, redis: Redis) -> None:
    r = client.get("/v1/models")
    assert r.status_code == 200
    models = {m["name"]: m for m in r.json()["models"]}
    assert set(SERVED) <= set(models)
    assert not {"broken", "badconfig"} & set(models)
    worker_id = worker.record(redis)["id"]
    for name in SERVED:
        assert models[name]["ready"] is True, name
        assert worker_id in models[name]["workers"]
        assert models[name]["pool"] == "default"
        assert "seen" not in models[name]
    assert models["iris"]["versions"]["1"]["inputs"] == [
        {"name": "input", "datatype": "FP32", "shape": [-1, 4]}
    ]
    assert models["slow"]["max_batch_size"] == 2


def test_one_model(client: TestClient) -> None:
    r = client.get("/v1/models/digits")
    assert r.status_code == 200
    digits = r.json()
    assert digits["name"] == "digits"
    assert digits["latest"] == "1"
    assert digits["ready"] is True
    assert digits["labels"] == [str(i) for i in range(10)]
    assert digits["versions"]["1"] == {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
        "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
        ],
    }
    assert_error(client.get("/v1/models/broken"), 404, "model_not_found", "'broken'")


def test_workers_show_pool_models_and_errors(
    client: TestClient, worker: Worker, model_repo: Path
) -> None:
    r = client.get("/v1/workers")
    assert r.status_code == 200
    (mine,) = [w for w in r.json()["workers"] if w.get("pid") == worker.pid]
    assert mine["alive"] is True
    assert mine["pool"] == "default"
    assert mine["models"] == SERVED
    assert len(mine["errors"]) == 2
    assert any(e.startswith(f"{model_repo / 'broken'}: ") for e in mine["errors"])
    assert any(e.startswith(f"{model_repo / 'badconfig'}: ") for e in mine["errors"])
    assert mine["done"] >= 0 and mine["running"] >= 0


def test_health_and_ready(client: TestClient) -> None:
    r = client.get("/healthz")
    assert (r.status_code, r.json()) == (200, {"status": "ok"})
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.json()["ready"] is True
    assert r.json()["workers"] >= 1


# --- listing -------------------------------------------------------------------------------------


def test_list_pages_newest_first_without_duplicates(client: TestClient) -> None:
    ids = []
    for i in range(5):
        r = submit(client, {"model": "iris", "data": [[4.0 + i, 3.0, 1.5, 0.2]]}, Prefer="wait=10")
        assert r.status_code == 200, r.text
        ids.append(r.json()["id"])

    pages: list[list[dict]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"model": "iris", "status": "succeeded", "limit": 2}
        if cursor is not None:
            params["cursor"] = cursor
        r = client.get("/v1/jobs", params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        pages.append(page["jobs"])
        cursor = page["next_cursor"]
        if cursor is None or len(pages) > 100:
            break

    assert len(pages[0]) == 2 and len(pages[1]) == 2
    listed = [j for page in pages for j in page]
    listed_ids = [j["id"] for j in listed]
    assert len(listed_ids) == len(set(listed_ids))
    assert listed_ids[:5] == ids[::-1]  # the newest first
    created = [j["created_at"] for j in listed]
    assert created == sorted(created, reverse=True)
    for newer, older in itertools.pairwise(pages):
        if newer and older:
            assert min(j["created_at"] for j in newer) > max(j["created_at"] for j in older)
    assert {(j["model"], j["status"]) for j in listed} == {("iris", "succeeded")}


def test_list_filters_by_model_and_status(client: TestClient) -> None:
    r = submit(client, {"model": "failing", "data": [[1, 2, 3, 4], [5, 6, 7, 8]]}, Prefer="wait=10")
    failed_id = r.json()["id"]
    assert r.json()["status"] == "failed"

    failed = client.get("/v1/jobs", params={"status": "failed", "limit": 500}).json()["jobs"]
    assert failed_id in [j["id"] for j in failed]
    assert {j["status"] for j in failed} == {"failed"}

    by_model = client.get("/v1/jobs", params={"model": "failing", "limit": 500}).json()["jobs"]
    assert failed_id in [j["id"] for j in by_model]
    assert {j["model"] for j in by_model} == {"failing"}
    assert {j["status"] for j in by_model} == {"failed", "succeeded"}

    both = client.get("/v1/jobs", params={"model": "failing", "status": "succeeded"}).json()
    assert failed_id not in [j["id"] for j in both["jobs"]]
    assert {(j["model"], j["status"]) for j in both["jobs"]} == {("failing", "succeeded")}

    none = client.get("/v1/jobs", params={"model": "no-such-model"}).json()
    assert none == {"jobs": [], "next_cursor": None}

    assert_error(
        client.get("/v1/jobs", params={"status": "done"}), 422, "invalid_request", "status"
    )
    assert_error(client.get("/v1/jobs", params={"limit": 0}), 422, "invalid_request", "limit")


def test_pages_split_between_jobs_of_the_same_millisecond_lose_none(
    client: TestClient, redis: Redis
) -> None:
    """Two jobs that share their creation millisecond: a page boundary between them must not
    skip either (the cursor carries the id as a tie-breaker)."""
    body = {"model": "breast_cancer", "data": [[1.0] * 30]}
    ids = [submit(client, body, Prefer="wait=10").json()["id"] for _ in range(3)]
    same_ms = redis.zscore(keys.jobs_index("default"), ids[0])
    for job_id in ids:
        redis.zadd(keys.jobs_index("default"), {job_id: same_ms})
    listed, cursor = [], None
    while True:
        params: dict[str, Any] = {"model": "breast_cancer", "limit": 1}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/v1/jobs", params=params).json()
        listed += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert set(ids) <= set(listed) and len(listed) == len(set(listed))
    assert_error(client.get("/v1/jobs", params={"cursor": "yesterday"}), 400, "invalid_cursor", "")
