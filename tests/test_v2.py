"""The V2 / Triton protocol end to end: tritonclient (sync and aio) and raw HTTP against a hub
process (``inferhub serve``), real arq workers, Redis and onnxruntime.

Every datatype travels through Identity models built here with the onnx helper API, served by a
second worker on its own pool so that the module's default worker is not disturbed.
"""

from __future__ import annotations

import gzip
import json
import random
import struct
import subprocess
import sys
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.http as triton
import tritonclient.http.aio as triton_aio
from helpers import IR_VERSION, OPSET, wait_for
from onnx import TensorProto, helper
from redis import Redis
from sklearn.datasets import load_breast_cancer, load_digits, load_iris
from stack import Stack, Stacks, Worker
from tritonclient.utils import InferenceServerException

from contract import keys
from contract.errors import InferhubError
from hub.v2.codec import parse_request
from hub.v2.compression import decompress
from hub.v2.errors import status_of
from hub.v2.routes import hub_priority

MAX_BODY = 4 * 1024 * 1024  # the test hub's body limit, small so that 413 is cheap to reach

ROWS = {
    "iris": load_iris().data[:5],
    "digits": load_digits().data[:5],
    "breast_cancer": load_breast_cancer().data[:5],
}

ONNX_TYPES = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def address(stack: Stack) -> str:
    """``host:port`` of a hub process (tritonclient needs real HTTP), with a small body limit."""
    stack.first_worker(wait=False)  # the hub is ready once the worker is
    return stack.hub("v2", max_body_bytes=MAX_BODY).url.removeprefix("http://")


@pytest.fixture(scope="module")
def http(address: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://{address}", timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def tc(address: str) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(url=address)
    yield client
    client.close()


def build_identity(folder: Path, datatype: str) -> None:
    """x [-1, 3] -> Identity -> y, of one datatype, in pool ``identity``."""
    kind = ONNX_TYPES[datatype]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        f"identity_{datatype.lower()}",
        [helper.make_tensor_value_info("x", kind, ["N", 3])],
        [helper.make_tensor_value_info("y", kind, ["N", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    (folder / "1").mkdir(parents=True)
    onnx.save(model, folder / "1" / "model.onnx")
    (folder / "config.toml").write_text('pool = "identity"\nmax_batch_size = 8\n')


@pytest.fixture(scope="module")
def identity_worker(
    stack: Stack, http: httpx.Client, tmp_path_factory: pytest.TempPathFactory
) -> Worker:
    """A second worker, pool ``identity``, serving ``identity_<datatype>`` for every datatype."""
    repo = tmp_path_factory.mktemp("identity") / "models"
    for datatype in ONNX_TYPES:
        build_identity(repo / f"identity_{datatype.lower()}", datatype)
    worker = stack.worker("identity", models=repo, pool="identity")
    # ready as the hub sees them (its catalogue is cached for a second)
    wait_for(
        lambda: all(
            http.get(f"/v2/models/identity_{d.lower()}/ready").status_code == 200
            for d in ONNX_TYPES
        ),
        what="the identity models to be ready",
    )
    return worker


# --- helpers ---------------------------------------------------------------------------------


def local_run(model_repo: Path, name: str, rows: np.ndarray) -> dict[str, np.ndarray]:
    """onnxruntime's own answer, in this process."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    session = ort.InferenceSession(
        str(model_repo / name / "1" / "model.onnx"), so, providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"input": rows}), strict=True))


def triton_input(rows: np.ndarray, binary: bool = True) -> triton.InferInput:
    tensor = triton.InferInput("input", list(rows.shape), "FP32")
    return tensor.set_data_from_numpy(rows, binary_data=binary)


def binary_body(
    inputs: list[tuple[dict[str, Any], bytes]], **extra: Any
) -> tuple[bytes, dict[str, str]]:
    """A request with binary tensors: the JSON header, then each input's bytes."""
    tensors = []
    for tensor, raw in inputs:
        tensors.append({**tensor, "parameters": {"binary_data_size": len(raw)}})
    header = json.dumps({"inputs": tensors, **extra}).encode()
    body = header + b"".join(raw for _, raw in inputs)
    return body, {"Inference-Header-Content-Length": str(len(header))}


def bytes_raw(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def read_response(response: httpx.Response) -> dict[str, np.ndarray | list[Any]]:
    """The outputs of a raw V2 response: binary ones as arrays, JSON ones as their data."""
    assert response.status_code == 200, response.text
    body = response.content
    length = response.headers.get("inference-header-content-length")
    header = json.loads(body[: int(length)] if length else body)
    at = int(length) if length else 0
    out: dict[str, Any] = {}
    for tensor in header["outputs"]:
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        if size is None:
            out[tensor["name"]] = tensor["data"]
            continue
        raw = body[at : at + size]
        at += size
        if tensor["datatype"] == "BYTES":
            items = []
            i = 0
            while i < len(raw):
                (n,) = struct.unpack_from("<I", raw, i)
                items.append(raw[i + 4 : i + 4 + n])
                i += 4 + n
            out[tensor["name"]] = np.array(items, dtype=object).reshape(tensor["shape"])
        else:
            dtype = {"BOOL": "bool", "FP16": "<f2", "FP32": "<f4", "FP64": "<f8"}.get(
                tensor["datatype"], tensor["datatype"].lower()
            )
            out[tensor["name"]] = np.frombuffer(raw, dtype=dtype).reshape(tensor["shape"])
    assert at == (len(body) if length else 0), "bytes after the binary outputs"
    return out


def assert_error(response: httpx.Response, status: int, *fragments: str) -> str:
    """Triton's error shape: ``{"error": "message"}``."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    for fragment in fragments:
        assert fragment in body["error"], f"{fragment!r} not in {body['error']!r}"
    return body["error"]


# --- tritonclient, sync ----------------------------------------------------------------------


def test_kserves_rest_client(address: str) -> None:
    """KServe's InferenceRESTClient reads the health bodies ({"live": true}...), then infers;
    run by tests/kserve_rest_client.py in a process of its own."""
    script = Path(__file__).parent / "kserve_rest_client.py"
    done = subprocess.run(
        [sys.executable, str(script), f"http://{address}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.splitlines()[-1])
    assert got["live"] is True and got["ready"] is True and got["model_ready"] is True
    assert got["outputs"]["label"] == [0, 2]


def test_classification_answers_the_best_classes_as_triton(
    tc: triton.InferenceServerClient, model_repo: Path
) -> None:
    rows = load_iris().data[[0, 120]].astype(np.float32)
    tensor = triton.InferInput("input", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    wanted = [
        triton.InferRequestedOutput("probabilities", class_count=2),
        triton.InferRequestedOutput("label"),
    ]
    result = tc.infer("iris", [tensor], outputs=wanted)
    top = result.as_numpy("probabilities")
    assert top.shape == (2, 2)
    session = ort.InferenceSession(str(model_repo / "iris" / "1" / "model.onnx"))
    labels = ["setosa", "versicolor", "virginica"]
    _, probabilities = session.run(None, {"input": rows})
    for row, got in zip(probabilities, top, strict=True):
        best = np.argsort(-row)[:2]
        assert [g.decode() for g in got] == [f"{row[i]:f}:{i}:{labels[i]}" for i in best]
    assert result.as_numpy("label").tolist() == [0, 2]  # asked without: as it is
    label_only = [triton.InferRequestedOutput("label", class_count=1)]
    with pytest.raises(InferenceServerException, match="no class scores"):
        tc.infer("iris", [tensor], outputs=label_only)


def test_health_bodies_and_the_trailing_slash(http: httpx.Client) -> None:
    assert http.get("/v2/health/live").json() == {"live": True}
    assert http.get("/v2/health/ready").json() == {"ready": True}
    assert http.get("/v2/models/iris/ready").json() == {"name": "iris", "ready": True}
    assert http.get("/v2/").json() == http.get("/v2").json()


def test_health_and_server_metadata(tc: triton.InferenceServerClient) -> None:
    assert tc.is_server_live()
    assert tc.is_server_ready()
    meta = tc.get_server_metadata()
    assert meta["name"] == "inferhub"
    assert "binary_tensor_data" in meta["extensions"]


def test_model_metadata_and_config(tc: triton.InferenceServerClient) -> None:
    assert tc.is_model_ready("iris")
    assert tc.is_model_ready("iris", "1")
    meta = tc.get_model_metadata("iris")
    assert meta == tc.get_model_metadata("iris", "1")
    assert meta == {
        "name": "iris",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
        ],
    }
    config = tc.get_model_config("digits")
    assert config["max_batch_size"] == 256
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [64]}]
    assert config["output"] == [
        {"name": "label", "data_type": "TYPE_INT64", "dims": [1], "reshape": {"shape": []}},
        {"name": "probabilities", "data_type": "TYPE_FP32", "dims": [10]},
    ]
    assert config["dynamic_batching"] == {
        "preferred_batch_size": [64],
        "max_queue_delay_microseconds": 2000,
    }


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("name", sorted(ROWS))
def test_infer_equals_onnxruntime(
    tc: triton.InferenceServerClient, model_repo: Path, name: str, binary: bool
) -> None:
    rows = ROWS[name].astype(np.float32)
    expected = local_run(model_repo, name, rows)
    if binary:  # tritonclient's defaults: binary inputs, every output binary
        result = tc.infer(name, [triton_input(rows)], request_id="r-1")
    else:
        outputs = [triton.InferRequestedOutput(o, binary_data=False) for o in expected]
        result = tc.infer(name, [triton_input(rows, binary=False)], outputs=outputs)
    response = result.get_response()
    assert response["model_name"] == name and response["model_version"] == "1"
    assert response.get("id") == ("r-1" if binary else None)
    for tensor in response["outputs"]:
        assert ("binary_data_size" in (tensor.get("parameters") or {})) is binary
        assert ("data" in tensor) is not binary
    np.testing.assert_array_equal(result.as_numpy("label"), expected["label"])
    np.testing.assert_array_equal(result.as_numpy("probabilities"), expected["probabilities"])


def test_requested_outputs_only(tc: triton.InferenceServerClient, model_repo: Path) -> None:
    rows = ROWS["iris"].astype(np.float32)
    result = tc.infer(
        "iris", [triton_input(rows)], outputs=[triton.InferRequestedOutput("probabilities")]
    )
    assert [o["name"] for o in result.get_response()["outputs"]] == ["probabilities"]
    assert result.as_numpy("label") is None
    expected = local_run(model_repo, "iris", rows)["probabilities"]
    np.testing.assert_array_equal(result.as_numpy("probabilities"), expected)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compression(tc: triton.InferenceServerClient, model_repo: Path, algorithm: str) -> None:
    rows = ROWS["digits"].astype(np.float32)
    result = tc.infer(
        "digits",
        [triton_input(rows)],
        request_compression_algorithm=algorithm,
        response_compression_algorithm=algorithm,
    )
    expected = local_run(model_repo, "digits", rows)
    np.testing.assert_array_equal(result.as_numpy("probabilities"), expected["probabilities"])


def test_client_errors(tc: triton.InferenceServerClient) -> None:
    rows = ROWS["iris"].astype(np.float32)
    with pytest.raises(InferenceServerException) as unknown:
        tc.infer("nope", [triton_input(rows)])
    assert unknown.value.status() == "404"
    assert unknown.value.message() == "model 'nope' does not exist"

    wrong = np.zeros((2, 5), dtype=np.float32)
    with pytest.raises(InferenceServerException) as shape:
        tc.infer("iris", [triton_input(wrong)])
    assert shape.value.status() == "400"
    assert "shape [2, 5] does not match the model's [-1, 4]" in shape.value.message()

    with pytest.raises(InferenceServerException) as version:
        tc.get_model_metadata("iris", "9")
    assert version.value.status() == "404"
    assert "has no version '9'" in version.value.message()

    with pytest.raises(InferenceServerException) as output:
        tc.infer("iris", [triton_input(rows)], outputs=[triton.InferRequestedOutput("nope")])
    assert output.value.status() == "400"
    assert "has no output 'nope'" in output.value.message()

    with pytest.raises(InferenceServerException) as stats:
        tc.get_inference_statistics("nope")
    assert stats.value.status() == "404"


def test_repository_index(tc: triton.InferenceServerClient, orphan_model: str) -> None:
    def index() -> dict[tuple[str, str], dict[str, Any]]:
        return {(m["name"], m["version"]): m for m in tc.get_model_repository_index()}

    # the hub's catalogue is cached for a second: wait for the orphan to show
    wait_for(lambda: (orphan_model, "1") in index(), what="orphan in the index")
    index = index()
    assert index[("iris", "1")]["state"] == "READY"
    assert index[(orphan_model, "1")]["state"] == "UNAVAILABLE"
    assert "no live worker of pool 'nobody'" in index[(orphan_model, "1")]["reason"]


def test_model_without_worker_is_not_ready(
    tc: triton.InferenceServerClient, orphan_model: str
) -> None:
    assert not tc.is_model_ready(orphan_model)
    with pytest.raises(InferenceServerException) as exc:
        tc.infer(orphan_model, [triton_input(ROWS["iris"].astype(np.float32))])
    assert exc.value.status() == "503"
    assert "is not ready: no live worker of pool 'nobody'" in exc.value.message()


# --- tritonclient, aio -----------------------------------------------------------------------


@pytest.fixture
async def atc(address: str) -> AsyncIterator[triton_aio.InferenceServerClient]:
    client = triton_aio.InferenceServerClient(url=address)
    yield client
    await client.close()


async def test_aio(atc: triton_aio.InferenceServerClient, model_repo: Path) -> None:
    assert await atc.is_server_live()
    assert await atc.is_server_ready()
    assert "binary_tensor_data" in (await atc.get_server_metadata())["extensions"]
    assert await atc.is_model_ready("breast_cancer")
    meta = await atc.get_model_metadata("breast_cancer")
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 30]}]
    config = await atc.get_model_config("breast_cancer")
    assert config["input"][0]["dims"] == [30]

    for name in sorted(ROWS):
        rows = ROWS[name].astype(np.float32)
        expected = local_run(model_repo, name, rows)
        tensor = triton_aio.InferInput("input", list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows)
        result = await atc.infer(name, [tensor], request_compression_algorithm="gzip")
        np.testing.assert_array_equal(result.as_numpy("label"), expected["label"])
        np.testing.assert_array_equal(result.as_numpy("probabilities"), expected["probabilities"])

    with pytest.raises(InferenceServerException) as exc:
        await atc.infer("nope", [tensor])
    assert exc.value.status() == "404" and "does not exist" in exc.value.message()


# --- raw HTTP --------------------------------------------------------------------------------


def sample(datatype: str) -> np.ndarray:
    """A [2, 3] array of the datatype with its extreme values."""
    if datatype == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    if datatype == "BYTES":
        items = [b"", b"abc", "h\u00e9llo \u2603".encode(), b"x" * 300, b"\x00", b"o\x00k"]
        return np.array(items, dtype=object).reshape(2, 3)
    dtype = np.dtype(ONNX_DTYPES[datatype])
    if dtype.kind == "f":
        info = np.finfo(dtype)
        values = [info.min, info.max, 0.0, -1.5, 0.1, float(info.tiny)]
    else:
        iinfo = np.iinfo(dtype)
        values = [iinfo.min, iinfo.max, 0, 1, iinfo.max - 1, iinfo.min + 1]
    return np.array(values, dtype=dtype).reshape(2, 3)


ONNX_DTYPES = {
    "UINT8": "<u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "<i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}


@pytest.mark.parametrize("datatype", list(ONNX_TYPES))
def test_every_datatype_round_trips(
    http: httpx.Client, identity_worker: Worker, datatype: str
) -> None:
    model = f"/v2/models/identity_{datatype.lower()}/infer"
    tensor = {"name": "x", "datatype": datatype, "shape": [2, 3]}

    # binary both ways: exact bytes
    array = sample(datatype)
    raw = bytes_raw(list(array.flat)) if datatype == "BYTES" else array.tobytes()
    body, headers = binary_body([(tensor, raw)], parameters={"binary_data_output": True})
    response = http.post(model, content=body, headers=headers)
    got = read_response(response)["y"]
    assert isinstance(got, np.ndarray)
    assert got.shape == (2, 3)
    assert got.tolist() == array.tolist()
    assert response.headers["content-type"] == "application/octet-stream"

    # JSON both ways
    data = [b.decode() for b in array.flat] if datatype == "BYTES" else array.ravel().tolist()
    response = http.post(model, json={"inputs": [{**tensor, "data": data}]})
    (out,) = response.json()["outputs"]
    assert out == {"name": "y", "datatype": datatype, "shape": [2, 3], "data": data}


def test_bytes_must_be_text_for_onnxruntime(http: httpx.Client, identity_worker: Worker) -> None:
    items = [b"ok", b"\xff\xfe not utf-8", b""]
    body, headers = binary_body(
        [({"name": "x", "datatype": "BYTES", "shape": [1, 3]}, bytes_raw(items))]
    )
    response = http.post("/v2/models/identity_bytes/infer", content=body, headers=headers)
    assert_error(response, 400, "input 'x': BYTES element 1 is not UTF-8 text")


def test_bytes_mixed_with_json_outputs(http: httpx.Client, identity_worker: Worker) -> None:
    """A binary BYTES input, its output asked as JSON by the output's own ``binary_data``."""
    items = [b"alpha", b"", "\u00fcml\u00e4ut".encode(), b"d", b"e" * 1000, b"f"]
    body, headers = binary_body(
        [({"name": "x", "datatype": "BYTES", "shape": [2, 3]}, bytes_raw(items))],
        outputs=[{"name": "y", "parameters": {"binary_data": False}}],
        parameters={"binary_data_output": True},
    )
    response = http.post("/v2/models/identity_bytes/infer", content=body, headers=headers)
    assert "inference-header-content-length" not in response.headers
    assert read_response(response)["y"] == [b.decode() for b in items]


def test_nested_data(http: httpx.Client, model_repo: Path) -> None:
    rows = ROWS["iris"][:3].astype(np.float32)
    flat = {"name": "input", "datatype": "FP32", "shape": [3, 4], "data": rows.ravel().tolist()}
    nested = {**flat, "data": rows.tolist()}
    answers = [
        http.post("/v2/models/iris/infer", json={"inputs": [t]}).json() for t in (flat, nested)
    ]
    assert answers[0]["outputs"] == answers[1]["outputs"]
    probabilities = next(o for o in answers[1]["outputs"] if o["name"] == "probabilities")
    expected = local_run(model_repo, "iris", rows)["probabilities"]
    np.testing.assert_array_equal(
        np.array(probabilities["data"], dtype=np.float32).reshape(3, 3), expected
    )


def test_infer_is_online_and_leaves_no_job(http: httpx.Client, redis: Redis) -> None:
    jobs_before = redis.zcard(keys.jobs_index("default"))
    rows = ROWS["iris"][:2].astype(np.float32).tolist()
    response = http.post(
        "/v2/models/iris/infer",
        json={
            "id": "abc",
            "parameters": {"priority": 1, "tag": "mine"},
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 4], "data": rows}],
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == "abc" and "parameters" not in body
    assert body["outputs"][0]["name"] == "label" and body["outputs"][0]["shape"] == [2]
    assert redis.zcard(keys.jobs_index("default")) == jobs_before  # no record, no event log


def test_response_compression_follows_accept_encoding(http: httpx.Client) -> None:
    rows = ROWS["digits"].astype(np.float32)
    body, headers = binary_body(
        [({"name": "input", "datatype": "FP32", "shape": list(rows.shape)}, rows.tobytes())],
        parameters={"binary_data_output": True},
    )
    for accept in ("deflate", "gzip", "identity"):
        response = http.post(
            "/v2/models/digits/infer", content=body, headers={**headers, "Accept-Encoding": accept}
        )
        assert response.headers.get("content-encoding", "identity") == accept
        assert read_response(response)["label"].shape == (5,)  # type: ignore[union-attr]


def test_priority() -> None:
    assert [hub_priority(p) for p in (0, 1, 2, 101, 200, 201, 10**9)] == [
        0,
        100,
        99,
        0,
        -99,
        -100,
        -100,
    ]


IRIS = {"name": "input", "datatype": "FP32", "shape": [1, 4]}
ROW = np.ones((1, 4), dtype=np.float32).tobytes()


def _header(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


def _iris(size: int) -> dict[str, Any]:
    return {"inputs": [{**IRIS, "parameters": {"binary_data_size": size}}]}


def _bytes_header(size: int) -> bytes:
    tensor = {"name": "x", "datatype": "BYTES", "shape": [1, 3]}
    return _header({"inputs": [{**tensor, "parameters": {"binary_data_size": size}}]})


# name: (model, JSON header, what follows it, Inference-Header-Content-Length if not the
# header's length, a fragment of the message)
MALFORMED: dict[str, tuple[str, bytes, bytes, str | None, str]] = {
    "header past the end": ("iris", _header(_iris(16)), ROW, "500", "but the body has only"),
    "header length not a number": ("iris", _header(_iris(16)), ROW, "12a", "non-negative"),
    "header length negative": ("iris", _header(_iris(16)), ROW, "-3", "non-negative"),
    "header not json": ("iris", b"{not json", ROW, None, "not valid JSON"),
    "size past the end": ("iris", _header(_iris(20)), ROW, None, "runs past the end"),
    "bytes left over": ("iris", _header(_iris(16)), ROW + bytes(4), None, "add up to 16"),
    "size not the shape's": ("iris", _header(_iris(12)), ROW[:12], None, "needs 16 bytes"),
    "size not a number": ("iris", _header(_iris("16")), ROW, None, "non-negative integer"),  # type: ignore[arg-type]
    "data and binary": (
        "iris",
        _header({"inputs": [{**IRIS, "data": [1] * 4, "parameters": {"binary_data_size": 16}}]}),
        ROW,
        None,
        "not both",
    ),
    "truncated BYTES element": (
        "identity_bytes",
        _bytes_header(16),
        bytes_raw([b"a", b"b"]) + struct.pack("<I", 10) + b"cc",
        None,
        "element of 10 bytes is truncated (2 bytes are left)",
    ),
    "BYTES length cut short": (
        "identity_bytes",
        _bytes_header(12),
        bytes_raw([b"a", b"b"]) + b"\x01\x00",
        None,
        "length is cut short",
    ),
    "BYTES count not the shape's": (
        "identity_bytes",
        _bytes_header(10),
        bytes_raw([b"a", b"b"]),
        None,
        "needs 3 BYTES elements, the binary data has 2",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_binary_bodies(http: httpx.Client, identity_worker: Worker, case: str) -> None:
    model, header, tail, header_length, fragment = MALFORMED[case]
    response = http.post(
        f"/v2/models/{model}/infer",
        content=header + tail,
        headers={"Inference-Header-Content-Length": header_length or str(len(header))},
    )
    assert_error(response, 400, fragment)


def test_codec_never_fails_otherwise() -> None:
    """Every cut and many random corruptions of a valid body: parsed, or an error that V2 answers 400."""
    body, headers = binary_body(
        [
            ({"name": "s", "datatype": "BYTES", "shape": [3]}, bytes_raw([b"ab", b"", b"cde"])),
            ({"name": "f", "datatype": "FP32", "shape": [2, 2]}, np.ones(4, np.float32).tobytes()),
        ]
    )
    length = headers["Inference-Header-Content-Length"]
    assert list(parse_request(body, length).arrays) == ["s", "f"]
    rng = random.Random(4)
    cases = [(body[:cut], length) for cut in range(len(body))]
    for _ in range(3000):
        mutated = bytearray(body)
        for _ in range(rng.randint(1, 4)):
            mutated[rng.randrange(len(body))] = rng.randrange(256)
        cases.append((bytes(mutated), rng.choice([length, str(rng.randrange(len(body) + 9))])))
    for case, header_length in cases:
        try:
            parse_request(case, header_length)
        except InferhubError as exc:
            assert status_of(exc) == 400 and str(exc)
    for garbage in (b"", b"\x1f\x8b\x08\x00junk", gzip.compress(b"x" * 100)[:-9]):
        for encoding in ("gzip", "deflate"):
            with pytest.raises(InferhubError):
                decompress(garbage, encoding, 1000)


def test_garbage_bodies_are_400(http: httpx.Client) -> None:
    rng = random.Random(7)
    for _ in range(20):
        garbage = rng.randbytes(rng.randrange(1, 200))
        length = str(rng.randrange(0, 220))
        response = http.post(
            "/v2/models/iris/infer",
            content=garbage,
            headers={"Inference-Header-Content-Length": length},
        )
        assert_error(response, 400)


def test_bad_requests(http: httpx.Client) -> None:
    url = "/v2/models/iris/infer"
    good = {"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}
    cases = [
        (
            {"inputs": [{**good, "datatype": "FP64"}]},
            "datatype FP64 does not match the model's FP32",
        ),
        ({"inputs": [{**good, "datatype": "FLOAT"}]}, "datatype 'FLOAT' is not one of"),
        ({"inputs": [{**good, "shape": [2, 4]}]}, "needs 8 elements, data has 4"),
        ({"inputs": [good, good]}, "given twice"),
        ({"inputs": []}, "non-empty list"),
        ({"inputs": [good], "parameters": {"priority": -1}}, "'priority' must be"),
        ({"inputs": [good], "parameters": {"timeout": "soon"}}, "'timeout' must be"),
        (
            {
                "inputs": [good],
                "outputs": [{"name": "label", "parameters": {"classification": -1}}],
            },
            "'classification' must be",
        ),
    ]
    for doc, fragment in cases:
        assert_error(http.post(url, json=doc), 400, fragment)
    assert_error(
        http.post(url, content=b"\x00\x01", headers={"Content-Encoding": "br"}), 400, "'br'"
    )
    # the model fails at run time (two rows into a fixed [1, 4]): the worker's reason, as 500
    failing = {"name": "x", "datatype": "FP32", "shape": [2, 4], "data": [0] * 8}
    response = http.post("/v2/models/failing/infer", json={"inputs": [failing]})
    assert_error(response, 500, "inference failed")


def test_unknown_routes_and_models(http: httpx.Client) -> None:
    assert_error(http.get("/v2/models/nope"), 404, "model 'nope' does not exist")
    assert_error(http.get("/v2/models/nope/config"), 404, "does not exist")
    assert_error(http.get("/v2/models/iris/versions/7/ready"), 404, "no version '7'")
    assert_error(http.get("/v2/systemsharedmemory/status"), 404, "not a route of inferhub")
    assert_error(http.post("/v2/repository/index", content=b"{"), 400, "not valid JSON")
    # /v1 keeps its own shape
    assert http.get("/v1/models/nope").json()["error"]["code"] == "model_not_found"


def test_body_limits(http: httpx.Client) -> None:
    big = b"0" * (MAX_BODY + 1)
    assert_error(http.post("/v2/models/iris/infer", content=big), 413, "over")
    bomb = gzip.compress(b" " * (MAX_BODY + 1))
    response = http.post(
        "/v2/models/iris/infer", content=bomb, headers={"Content-Encoding": "gzip"}
    )
    assert_error(response, 413, "decompressed body is over")
    assert len(bomb) < 10_000


def _slow_request(rows: int, **parameters: Any) -> tuple[bytes, dict[str, str]]:
    data = np.zeros((rows, 16), dtype=np.float32).tobytes()
    return binary_body(
        [({"name": "x", "datatype": "FP32", "shape": [rows, 16]}, data)], parameters=parameters
    )


def test_timeout_parameter_is_the_deadline(http: httpx.Client) -> None:
    body, headers = _slow_request(4000, timeout=1)  # one microsecond: expired at once
    response = http.post("/v2/models/slow/infer", content=body, headers=headers)
    assert_error(response, 503, "request timeout expired", "no answer within 1e-06 s")


def test_not_ready_without_worker(stacks: Stacks) -> None:
    """Another Redis database: Redis answers, but no worker is alive there."""
    with stacks("empty") as empty, empty.app(wait_ready=False) as client:
        assert client.get("/v2/health/live").status_code == 200
        assert_error(client.get("/v2/health/ready"), 503, "no worker is alive")


def test_deflate_request_raw(http: httpx.Client) -> None:
    doc = {"inputs": [{**IRIS, "data": [5.1, 3.5, 1.4, 0.2]}]}
    response = http.post(
        "/v2/models/iris/infer",
        content=zlib.compress(json.dumps(doc).encode()),
        headers={"Content-Encoding": "deflate", "Content-Type": "application/json"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0] == {
        "name": "label",
        "datatype": "INT64",
        "shape": [1],
        "data": [0],
    }
