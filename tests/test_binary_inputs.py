"""Binary bodies for ``POST /v1/jobs`` (hub/bodies.py): .npy, .npz and the V2 binary tensor
form, across the session's real Redis and worker; malformed ones refused with a 4xx that says
what is wrong, and nothing written.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import orjson
import pytest
from helpers import ROOT, TestClient, wait_for
from redis import Redis
from sklearn.datasets import load_digits, load_iris
from stack import Hub, Stack, Worker

from contract import keys

WAIT = {"Prefer": "wait=30"}
NPY = {"Content-Type": "application/x-npy", **WAIT}
NPZ = {"Content-Type": "application/x-npz", **WAIT}
NPY_ONLY = {"Content-Type": "application/x-npy"}


def npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


def npz(compressed: bool = False, **arrays: np.ndarray) -> bytes:
    out = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(out, **arrays)
    return out.getvalue()


def onnxruntime(model: str, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    path = ROOT / "models" / model / "1" / "model.onnx"
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)


def outputs(job: dict[str, Any]) -> dict[str, np.ndarray]:
    assert job["status"] == "succeeded", job
    return {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in job["outputs"]}


@pytest.fixture(scope="module")
def hub(stack: Stack, worker: Worker) -> Hub:
    """A real hub process, for bodies sent in chunks over HTTP."""
    return stack.hub("binary")


@pytest.fixture(scope="module")
def small_body_client(stack: Stack, worker: Worker) -> Iterator[TestClient]:
    with stack.app(max_body_bytes=2**20) as c:
        yield c


def test_an_npy_body(client: TestClient) -> None:
    rows = load_digits().data[:5].astype(np.float32)
    r = client.post("/v1/jobs", params={"model": "digits"}, content=npy(rows), headers=NPY)
    assert r.status_code == 200, r.text
    got = outputs(r.json())
    label, probabilities = onnxruntime("digits", {"input": rows})
    assert np.array_equal(got["label"], label)
    assert np.array_equal(got["probabilities"].astype(np.float32), probabilities)


def test_an_npz_body_with_every_input(client: TestClient) -> None:
    a = np.arange(6, dtype=np.float32).reshape(3, 2)
    b = np.ones((3, 2), dtype=np.float32)
    for compressed in (False, True):
        body = npz(compressed, a=a, b=b)
        r = client.post("/v1/jobs", params={"model": "pair"}, content=body, headers=NPZ)
        assert r.status_code == 200, r.text
        assert np.array_equal(outputs(r.json())["sum"], a + b)


def test_the_v2_binary_form_with_outputs_and_priority(client: TestClient) -> None:
    rows = load_iris().data[[0, 60, 120]].astype(np.float32)
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": [3, 4],
                    "parameters": {"binary_data_size": rows.nbytes},
                }
            ],
            "outputs": [{"name": "label"}],
        }
    )
    r = client.post(
        "/v1/jobs",
        params={"model": "iris", "priority": 5},
        content=header + rows.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header)), **WAIT},
    )
    assert r.status_code == 200, r.text
    got = outputs(r.json())
    assert list(got) == ["label"] and got["label"].tolist() == [0, 1, 2]


def test_an_npy_for_a_model_of_several_inputs_names_its_input(client: TestClient) -> None:
    a = np.zeros((2, 2), dtype=np.float32)
    r = client.post("/v1/jobs", params={"model": "pair"}, content=npy(a), headers=NPY)
    assert r.status_code == 422 and "?input=" in r.json()["error"]["message"]
    r = client.post("/v1/jobs", params={"model": "pair", "input": "a"}, content=npy(a), headers=NPY)
    assert r.status_code == 422 and "'b'" in r.json()["error"]["message"]  # b is missing


def test_idempotency_key_with_a_binary_body(client: TestClient) -> None:
    body = npy(load_digits().data[:2].astype(np.float32))
    headers = {**NPY, "Idempotency-Key": "binary-once"}
    first = client.post("/v1/jobs", params={"model": "digits"}, content=body, headers=headers)
    again = client.post("/v1/jobs", params={"model": "digits"}, content=body, headers=headers)
    assert first.json()["id"] == again.json()["id"]
    other = client.post(
        "/v1/jobs",
        params={"model": "digits"},
        content=npy(np.zeros((2, 64), np.float32)),
        headers=headers,
    )
    assert other.status_code == 409


def truncated_npy() -> bytes:
    return npy(np.zeros((10, 64), dtype=np.float32))[:-7]


def object_npy() -> bytes:
    out = io.BytesIO()
    np.save(out, np.array([b"a", 1], dtype=object), allow_pickle=True)
    return out.getvalue()


def bomb() -> bytes:
    """Two MiB of zeros, compressed to a few kilobytes."""
    return npz(True, input=np.zeros((8192, 64), dtype=np.float32))


BAD = [
    pytest.param({}, NPY, npy(np.zeros((1, 64), np.float32)), 400, "?model=NAME", id="no model"),
    pytest.param({"model": "digits"}, NPY, b"not numpy at all", 400, "not an .npy", id="garbage"),
    pytest.param({"model": "digits"}, NPY, truncated_npy(), 400, "holds fewer", id="truncated"),
    pytest.param(
        {"model": "digits"},
        NPY,
        npy(np.zeros((1, 64), np.float32)) + b"xx",
        400,
        "past its array",
        id="trailing bytes",
    ),
    pytest.param({"model": "digits"}, NPY, object_npy(), 422, "pickled", id="objects"),
    pytest.param({"model": "digits"}, NPZ, b"PK\x03\x04broken", 400, "not an .npz", id="bad zip"),
    pytest.param(
        {"model": "digits"}, NPY, npy(np.zeros((1, 64), np.float64)), 422, "FP64", id="dtype"
    ),
    pytest.param(
        {"model": "digits"}, NPY, npy(np.zeros((1, 63), np.float32)), 422, "shape", id="shape"
    ),
    pytest.param(
        {"model": "nope"}, NPY, npy(np.zeros((1, 4), np.float32)), 404, "nope", id="model"
    ),
]


@pytest.mark.parametrize(("query", "headers", "body", "status", "fragment"), BAD)
def test_a_bad_binary_body_is_refused_and_writes_nothing(
    client: TestClient,
    redis: Redis,
    query: dict[str, str],
    headers: dict[str, str],
    body: bytes,
    status: int,
    fragment: str,
) -> None:
    before = redis.zcard(keys.jobs_index("default")), stored_inputs(redis)
    r = client.post("/v1/jobs", params=query, content=body, headers=headers)
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]["message"], r.text
    assert (redis.zcard(keys.jobs_index("default")), stored_inputs(redis)) == before


@pytest.fixture
def orphan(client: TestClient, orphan_model: str) -> str:
    """A model no worker serves (its jobs stay queued), once the hub's catalogue has it."""
    wait_for(lambda: client.get(f"/v1/models/{orphan_model}").status_code == 200, what="orphan")
    return orphan_model


def stored_inputs(redis: Redis) -> set[bytes]:
    return set(redis.scan_iter(match=keys.PREFIX + "{*}:job:*:inputs"))


def test_a_large_npy_body_is_stored_as_it_came_beside_a_small_arq_job(
    client: TestClient, redis: Redis, orphan: str
) -> None:
    rows = np.random.default_rng(7).random((100_000, 4), dtype=np.float32)  # 1.6 MB
    r = client.post("/v1/jobs", params={"model": orphan}, content=npy(rows), headers=NPY_ONLY)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    # the body's array bytes as they came, under the job's TTL; the arq job only refers to them
    assert redis.get(keys.job_inputs(job_id)) == rows.tobytes()
    assert 0 < redis.ttl(keys.job_inputs(job_id)) <= redis.ttl(keys.job(job_id))
    assert redis.strlen(keys.arq_job_prefix("default") + job_id) < 4096


def test_a_repeated_large_body_leaves_no_inputs_behind(
    client: TestClient, redis: Redis, orphan: str
) -> None:
    body = npy(np.ones((100_000, 4), dtype=np.float32))
    headers = {**NPY_ONLY, "Idempotency-Key": "large-once"}
    before = stored_inputs(redis)
    first = client.post("/v1/jobs", params={"model": orphan}, content=body, headers=headers)
    again = client.post("/v1/jobs", params={"model": orphan}, content=body, headers=headers)
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert stored_inputs(redis) - before == {keys.job_inputs(first.json()["id"]).encode()}


def test_a_large_npy_job_runs_from_its_stored_bytes_which_then_go(
    client: TestClient, redis: Redis
) -> None:
    rows = np.tile(load_digits().data.astype(np.float32), (12, 1))  # 21,564 rows, 5.5 MB
    r = client.post("/v1/jobs", params={"model": "digits"}, content=npy(rows), headers=NPY)
    assert r.status_code == 200, r.text
    job = r.json()
    label, probabilities = onnxruntime("digits", {"input": rows})
    got = client.get(job["urls"]["outputs"], params={"format": "npz"})
    with np.load(io.BytesIO(got.content)) as archive:
        assert np.array_equal(archive["label"], label)
        assert np.allclose(archive["probabilities"], probabilities)
    wait_for(lambda: not redis.exists(keys.job_inputs(job["id"])), what="the inputs deleted")


def test_an_npz_that_would_inflate_past_the_body_limit(small_body_client: TestClient) -> None:
    body = bomb()
    assert len(body) < 2**20  # small on the wire
    r = small_body_client.post("/v1/jobs", params={"model": "digits"}, content=body, headers=NPZ)
    assert r.status_code == 413 and "once inflated" in r.json()["error"]["message"]
    names = zipfile.ZipFile(io.BytesIO(body)).namelist()
    assert names == ["input.npy"]


def chunked(body: bytes, size: int = 256 * 1024) -> Iterator[bytes]:
    """The body in pieces, sent without a Content-Length: its length shows only at its end."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


@pytest.mark.parametrize(
    ("cut", "fragment"),
    [(-7, "holds fewer"), (+5, "past its array")],
    ids=["short", "long"],
)
def test_a_large_npy_body_whose_length_shows_wrong_at_its_end_leaves_nothing(
    hub: Hub, redis: Redis, cut: int, fragment: str
) -> None:
    """Sent chunked to a real server (the test client hands the app the whole body at once),
    several slices are stored before the end shows the body is wrong: they are removed."""
    body = npy(np.zeros((40_000, 64), np.float32))  # 10 MB
    body = body[:cut] if cut < 0 else body + b"x" * cut
    before = redis.zcard(keys.jobs_index("default")), stored_inputs(redis)
    r = httpx.post(
        f"{hub.url}/v1/jobs", params={"model": "digits"}, content=chunked(body), headers=NPY
    )
    assert r.status_code == 400, r.text
    assert fragment in r.json()["error"]["message"]
    assert (redis.zcard(keys.jobs_index("default")), stored_inputs(redis)) == before


@pytest.mark.parametrize("layout", ["big-endian", "fortran"])
def test_an_npy_body_in_another_layout_is_converted(client: TestClient, layout: str) -> None:
    rows = load_digits().data[:3000].astype(np.float32)
    sent = rows.astype(">f4") if layout == "big-endian" else np.asfortranarray(rows)
    r = client.post("/v1/jobs", params={"model": "digits"}, content=npy(sent), headers=NPY)
    assert r.status_code == 200, r.text
    label, _ = onnxruntime("digits", {"input": rows})
    got = client.get(r.json()["urls"]["outputs"], params={"format": "npy", "output": "label"})
    assert np.array_equal(np.load(io.BytesIO(got.content)), label)


def test_a_chunked_npy_body_declaring_more_than_the_limit_is_413_before_it_is_stored(
    stack: Stack, worker: Worker, redis: Redis
) -> None:
    """Without a Content-Length, the .npy header's declared size is what is checked (a real
    server: the test client hands the app the whole body at once)."""
    hub = stack.hub("limited", max_body_bytes=2**20)
    body = npy(np.zeros((8192, 64), np.float32))  # 2 MiB, over the 1 MiB limit
    before = redis.zcard(keys.jobs_index("default")), stored_inputs(redis)
    r = httpx.post(
        f"{hub.url}/v1/jobs", params={"model": "digits"}, content=chunked(body), headers=NPY
    )
    assert r.status_code == 413, r.text
    assert "the .npy declares 2,097,152 bytes" in r.json()["error"]["message"]
    assert (redis.zcard(keys.jobs_index("default")), stored_inputs(redis)) == before
