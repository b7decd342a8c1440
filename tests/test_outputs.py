"""Outputs stored once (contract/outputs.py, hub/outputs.py), across the session's real Redis
and worker: inline when small, a summary and a URL when large, on GET, SSE and the WebSocket;
every format of ``GET /v1/jobs/{id}/outputs`` read back equal to onnxruntime's; listings
without outputs; what Redis holds for a large job.
"""

from __future__ import annotations

import io
import zipfile
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
import pytest
import tritonclient.http as triton
from helpers import ROOT, TestClient, wait_job
from redis import Redis
from sklearn.datasets import load_digits

from contract import keys
from contract import outputs as outputs_store
from contract.errors import InvalidInput
from contract.tensors import pack_tensor, unpack_tensor, view_tensor
from contract.wire import dumps
from hub import outputs

DIGITS = ROOT / "models" / "digits" / "1" / "model.onnx"
LARGE = 3000  # digits rows: 3000 x (10 FP32 + 1 INT64) = 144 KB of outputs, over 64 KiB
TERMINAL = {"succeeded", "failed", "canceled"}


def rows(n: int) -> np.ndarray:
    data = load_digits().data.astype(np.float32)
    return data[np.arange(n) % len(data)]


def expected(n: int) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(DIGITS), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"input": rows(n)}), strict=True))


def run(client: TestClient, n: int) -> dict[str, Any]:
    body = {"model": "digits", "data": rows(n).tolist()}
    r = client.post("/v1/jobs", json=body, headers={"Prefer": "wait=30"})
    assert r.status_code in (200, 202), r.text
    job = wait_job(client, r.json()["id"], TERMINAL)
    assert job["status"] == "succeeded", job
    return dict(job)


@pytest.fixture(scope="module")
def large(client: TestClient) -> dict[str, Any]:
    return run(client, LARGE)


def test_small_outputs_ride_inline(client: TestClient) -> None:
    job = run(client, 3)
    assert [o["name"] for o in job["outputs"]] == ["label", "probabilities"]
    assert "outputs_summary" not in job
    assert job["urls"]["outputs"] == f"/v1/jobs/{job['id']}/outputs"


def test_large_outputs_are_a_summary_and_a_url(client: TestClient, large: dict[str, Any]) -> None:
    assert large["outputs"] is None
    label, probabilities = large["outputs_summary"]
    assert probabilities == {
        "name": "probabilities",
        "datatype": "FP32",
        "shape": [LARGE, 10],
        "bytes": LARGE * 10 * 4,
    }
    assert label["name"] == "label" and label["shape"] == [LARGE] and label["bytes"] == LARGE * 8
    want = expected(LARGE)["label"]
    assert label["classes"] == {
        str(c): int((want == c).sum()) for c in np.unique(want)
    }  # the digits' labels are "0".."9"
    assert large["outputs_bytes"] > LARGE * 48


def test_the_events_carry_the_summary(client: TestClient, large: dict[str, Any]) -> None:
    with client.stream("GET", f"/v1/jobs/{large['id']}/events") as stream:
        text = "".join(stream.iter_text())
    data = [orjson.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
    succeeded = data[-1]
    assert succeeded["type"] == "succeeded"
    assert "outputs" not in succeeded["data"]
    assert succeeded["data"]["outputs_url"] == large["urls"]["outputs"]
    assert succeeded["data"]["outputs_summary"] == large["outputs_summary"]
    with client.websocket_connect("/v1/ws") as ws:
        ws.send_json({"type": "subscribe", "ref": 1, "job_id": large["id"], "last_event_id": "0"})
        while (message := ws.receive_json())["type"] != "event" or message["event"]["type"] != (
            "succeeded"
        ):
            pass
    assert message["event"]["data"]["outputs_summary"] == large["outputs_summary"]


def test_redis_holds_the_outputs_once(redis: Redis, large: dict[str, Any]) -> None:
    packed = LARGE * 10 * 4 + LARGE * 8
    stored = redis.memory_usage(keys.job_outputs(large["id"]))
    assert stored is not None and stored <= 1.2 * packed
    assert 0 < redis.ttl(keys.job_outputs(large["id"])) <= 24 * 3600
    record = redis.memory_usage(keys.job(large["id"]))
    events = redis.memory_usage(keys.job_events(large["id"]))
    assert record is not None and record < 16 * 1024  # the inputs' signature, no outputs
    assert events is not None and events < 16 * 1024


@pytest.mark.parametrize(
    ("query", "accept"),
    [
        ({}, None),
        ({"format": "json"}, None),
        ({}, "application/json"),
    ],
)
def test_outputs_as_json(
    client: TestClient, large: dict[str, Any], query: dict[str, str], accept: str | None
) -> None:
    headers = {"Accept": accept} if accept else {}
    r = client.get(large["urls"]["outputs"], params=query, headers=headers)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["id"] == large["id"] and body["model_name"] == "digits"
    got = {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in body["outputs"]}
    want = expected(LARGE)
    assert np.array_equal(got["label"], want["label"])
    assert np.array_equal(got["probabilities"].astype(np.float32), want["probabilities"])


@pytest.mark.parametrize("how", ["query", "accept"])
def test_outputs_in_tritons_binary_form(
    client: TestClient, large: dict[str, Any], how: str
) -> None:
    if how == "query":
        r = client.get(large["urls"]["outputs"], params={"format": "binary"})
    else:
        r = client.get(large["urls"]["outputs"], headers={"Accept": "application/octet-stream"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    result = triton.InferResult.from_response_body(
        r.content, header_length=int(r.headers["Inference-Header-Content-Length"])
    )
    want = expected(LARGE)
    assert np.array_equal(result.as_numpy("label"), want["label"])
    assert np.array_equal(result.as_numpy("probabilities"), want["probabilities"])


def test_one_output_as_npy(client: TestClient, large: dict[str, Any]) -> None:
    r = client.get(
        large["urls"]["outputs"],
        params={"output": "probabilities"},
        headers={"Accept": "application/x-npy"},
    )
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-npy"
    assert r.headers["content-disposition"].endswith('-probabilities.npy"')
    array = np.load(io.BytesIO(r.content), allow_pickle=False)
    assert np.array_equal(array, expected(LARGE)["probabilities"])
    # two outputs and none named: which one is not guessed
    r = client.get(large["urls"]["outputs"], params={"format": "npy"})
    assert r.status_code == 422 and "?output=" in r.json()["error"]["message"]
    r = client.get(large["urls"]["outputs"], params={"format": "npy", "output": "nope"})
    assert r.status_code == 422 and "label, probabilities" in r.json()["error"]["message"]


def test_every_output_as_npz(client: TestClient, large: dict[str, Any]) -> None:
    r = client.get(large["urls"]["outputs"], params={"format": "npz"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-npz"
    assert zipfile.is_zipfile(io.BytesIO(r.content))
    with np.load(io.BytesIO(r.content), allow_pickle=False) as archive:
        assert sorted(archive.files) == ["label", "probabilities"]
        for name, want in expected(LARGE).items():
            assert np.array_equal(archive[name], want), name


def test_outputs_of_a_job_without_them(client: TestClient, redis: Redis) -> None:
    r = client.get("/v1/jobs/nosuchjob/outputs")
    assert r.status_code == 404
    failed = client.post("/v1/jobs", json={"model": "failing", "data": [[1, 2, 3, 4]] * 2})
    job = wait_job(client, failed.json()["id"], TERMINAL)
    assert job["status"] == "failed" and "outputs" not in job["urls"]
    r = client.get(f"/v1/jobs/{job['id']}/outputs")
    assert r.status_code == 409 and r.json()["error"]["code"] == "no_outputs"
    r = client.get(f"/v1/jobs/{job['id']}/outputs", params={"format": "csv"})
    assert r.status_code == 422


def test_the_listing_carries_no_outputs_unless_asked(
    client: TestClient, large: dict[str, Any]
) -> None:
    small = run(client, 2)
    listed = {j["id"]: j for j in client.get("/v1/jobs", params={"model": "digits"}).json()["jobs"]}
    assert listed[small["id"]]["outputs"] is None
    assert listed[large["id"]]["outputs"] is None
    assert listed[large["id"]]["outputs_summary"] == large["outputs_summary"]
    r = client.get("/v1/jobs", params={"model": "digits", "include": "outputs"})
    asked = {j["id"]: j for j in r.json()["jobs"]}
    assert asked[small["id"]]["outputs"] == small["outputs"]
    assert asked[large["id"]]["outputs"] is None  # large ones never ride in a listing


def test_bytes_outputs_have_no_npy_form() -> None:
    packed = [pack_tensor("text", np.array([b"a", b"bc"], dtype=object))]
    header = {"id": "j", "model_name": "m", "model_version": "1"}
    with pytest.raises(InvalidInput, match="pickled"):
        outputs.body("npy", packed, header, None)
    body = outputs.body("json", packed, header, None)
    assert orjson.loads(b"".join(body.chunks))["outputs"][0]["data"] == ["a", "bc"]


def test_a_large_body_is_written_in_slices() -> None:
    array = np.arange(3 * outputs.SLICE // 4, dtype=np.float32)  # 3 slices of raw bytes
    header = {"id": "j", "model_name": "m", "model_version": "1"}
    chunks = list(outputs.body("npz", [pack_tensor("x", array)], header, None).chunks)
    assert len(chunks) >= 3 and max(len(c) for c in chunks) <= outputs.SLICE + 4096
    with np.load(io.BytesIO(b"".join(chunks))) as archive:
        assert np.array_equal(archive["x"], array)


def test_the_stored_form_is_read_in_place() -> None:
    """contract/outputs.py: a header, then each tensor's raw bytes, which a reader views."""
    y = np.arange(12, dtype=np.float32).reshape(4, 3)
    packed = [
        view_tensor("y", y),
        pack_tensor("label", np.array([1, 2, 3, 4])),
        pack_tensor("text", np.array([b"a", b"bc", b"", b"d"], dtype=object)),
    ]
    blob = outputs_store.stored(packed)
    assert len(blob) < y.nbytes + 32 + 256  # the bytes once, and a small header
    loaded = outputs_store.load(blob)
    assert [p["name"] for p in loaded] == ["y", "label", "text"]
    assert isinstance(loaded[0]["raw"], memoryview) and loaded[0]["raw"].obj is blob  # no copy
    assert np.array_equal(unpack_tensor(loaded[0]), y)
    assert unpack_tensor(loaded[1]).tolist() == [1, 2, 3, 4]
    assert unpack_tensor(loaded[2]).tolist() == [b"a", b"bc", b"", b"d"]
    assert outputs_store.chunk_ranges(blob) is None
    # what a worker of the release before wrote (msgpack) still reads, until its TTL
    assert unpack_tensor(outputs_store.load(dumps(packed[1:2]))[0]).tolist() == [1, 2, 3, 4]
    assert outputs_store.chunk_ranges(outputs_store.chunk_list([(0, 2), (2, 4)])) == [
        (0, 2),
        (2, 4),
    ]
