"""What the hub refuses before it spends CPU on a body, across the real hub, worker and Redis.

An unauthenticated body is refused before it is read; a tensor whose declared datatype or
shape the model cannot take is refused before its data is decoded; ``/v1`` refuses NaN and
Infinity; ``parameters`` are bounded; deep nesting is a 400, never a 500. Nothing here times
anything: each test asserts an answer that only the new order of checks gives (a malformed
body answered 401, garbage data answered with the datatype the model wants).
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import onnx
import orjson
import pytest
from helpers import IR_VERSION, OPSET, TestClient, wait_for
from onnx import TensorProto, helper
from stack import Stack, Worker

from contract.errors import InvalidInput
from contract.settings import Settings
from hub.auth import new_key
from hub.offload import OFF_LOOP_BYTES, decode_body
from hub.schemas import JobRequest
from hub.validation import decode_inputs

IRIS_ROW = [5.1, 3.5, 1.4, 0.2]
DIGIT_ROW = [0.0] * 64
# a malformed JSON body: parsing it first would answer 400
MALFORMED = b'{"model": "iris", "data": [[5.1, 3.5'
JSON = {"Content-Type": "application/json"}  # without it FastAPI would not parse the body


def v1_error(response: Any, status: int, code: str, *fragments: str) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    for fragment in fragments:
        assert fragment in error["message"], f"{fragment!r} not in {error['message']!r}"
    return error["message"]


def v2_error(response: Any, status: int, *fragments: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    for fragment in fragments:
        assert fragment in body["error"], f"{fragment!r} not in {body['error']!r}"
    return body["error"]


def binary_infer(tensor: dict[str, Any], raw: bytes, **doc: Any) -> tuple[bytes, dict[str, str]]:
    header = orjson.dumps(
        {"inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}], **doc}
    )
    return header + raw, {"Inference-Header-Content-Length": str(len(header))}


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    path = tmp_path_factory.mktemp("limits-keys") / "keys.toml"
    return path, {
        "submitter": new_key(path, "acme", ["submit", "read"]),
        "reader": new_key(path, "acme", ["read"]),
    }


@pytest.fixture(scope="module")
def keyed(
    stack: Stack, worker: Worker, keys_file: tuple[Path, dict[str, str]]
) -> Iterator[TestClient]:
    with stack.app(api_keys_file=keys_file[0]) as client:
        yield client


def build_text_identity(folder: Path) -> None:
    """x BYTES [-1, 2] -> Identity -> y, in pool ``limits``."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "limits_text",
        [helper.make_tensor_value_info("x", TensorProto.STRING, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.STRING, ["N", 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    (folder / "1").mkdir(parents=True)
    onnx.save(model, folder / "1" / "model.onnx")
    (folder / "config.toml").write_text('pool = "limits"\nmax_batch_size = 8\n')


@pytest.fixture(scope="module")
def text_model(
    stack: Stack, client: TestClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """``limits_text``, a BYTES model, served by a worker of its own pool ``limits``."""
    repo = tmp_path_factory.mktemp("limits") / "models"
    build_text_identity(repo / "limits_text")
    worker = stack.worker("limits", models=repo, pool="limits")
    try:
        wait_for(
            lambda: client.get("/v2/models/limits_text/ready").status_code == 200,
            what="limits_text to be ready",
        )
        yield "limits_text"
    finally:
        worker.stop()


# --- authentication comes before the body ----------------------------------------------------


@pytest.mark.parametrize("authorization", [None, "Bearer ih_00000000_not-a-key"])
def test_v1_submit_without_a_valid_key_is_401_before_the_body_is_parsed(
    keyed: TestClient, authorization: str | None
) -> None:
    headers = {"Content-Type": "application/json"}
    if authorization:
        headers["Authorization"] = authorization
    response = keyed.post("/v1/jobs", content=MALFORMED, headers=headers)
    v1_error(response, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_v1_submit_without_the_submit_scope_is_403_before_the_body_is_parsed(
    keyed: TestClient, keys_file: tuple[Path, dict[str, str]]
) -> None:
    reader = {"Authorization": f"Bearer {keys_file[1]['reader']}", **JSON}
    v1_error(keyed.post("/v1/jobs", content=MALFORMED, headers=reader), 403, "forbidden", "submit")


def test_v1_submit_with_a_key_still_parses_and_runs(
    keyed: TestClient, keys_file: tuple[Path, dict[str, str]]
) -> None:
    headers = {"Authorization": f"Bearer {keys_file[1]['submitter']}"}
    v1_error(keyed.post("/v1/jobs", content=MALFORMED, headers=headers), 400, "malformed_json")
    response = keyed.post(
        "/v1/jobs",
        json={"model": "iris", "data": [IRIS_ROW]},
        headers={**headers, "Prefer": "wait=10"},
    )
    assert response.status_code == 200 and response.json()["status"] == "succeeded", response.text


def test_a_large_unauthenticated_body_is_401(keyed: TestClient) -> None:
    body = b'{"model": "digits", "data": [' + b"[" + b"0.5, " * (8 * OFF_LOOP_BYTES // 5) + b"0]"
    v1_error(keyed.post("/v1/jobs", content=body, headers=JSON), 401, "unauthorized")


def test_v2_infer_without_a_valid_key_is_401_before_the_body_is_parsed(keyed: TestClient) -> None:
    response = keyed.post("/v2/models/iris/infer", content=b"{not json")
    v2_error(response, 401, "Bearer")


# --- declared datatype and shape come before the data ----------------------------------------


def test_v2_bytes_to_a_float_model_is_refused_before_the_bytes_are_decoded(
    client: TestClient,
) -> None:
    # zero-length BYTES elements, and then a length cut short: decoding would find that
    raw = bytes(4 * 1000) + b"\x01\x00"
    body, headers = binary_infer({"name": "input", "datatype": "BYTES", "shape": [1000]}, raw)
    message = v2_error(
        client.post("/v2/models/iris/infer", content=body, headers=headers), 400, "BYTES", "FP32"
    )
    assert "cut short" not in message


def test_v2_a_large_bytes_body_to_a_float_model_is_400(client: TestClient) -> None:
    raw = bytes(4 * OFF_LOOP_BYTES)  # a million zero-length elements, decoded in a thread if at all
    body, headers = binary_infer(
        {"name": "input", "datatype": "BYTES", "shape": [1, len(raw) // 4]}, raw
    )
    v2_error(
        client.post("/v2/models/iris/infer", content=body, headers=headers),
        400,
        "datatype BYTES does not match the model's FP32",
    )


def test_v2_json_bytes_to_a_float_model_is_refused_before_the_data_is_decoded(
    client: TestClient,
) -> None:
    tensor = {"name": "input", "datatype": "BYTES", "shape": [3], "data": ["", "", 7]}
    message = v2_error(client.post("/v2/models/iris/infer", json={"inputs": [tensor]}), 400, "FP32")
    assert "strings" not in message


def test_v2_a_shape_the_model_cannot_take_is_refused_before_the_data_is_decoded(
    client: TestClient,
) -> None:
    # 16 bytes are not [2, 5] of FP32, but the model takes [-1, 4] anyway: that is said first
    body, headers = binary_infer({"name": "input", "datatype": "FP32", "shape": [2, 5]}, bytes(16))
    message = v2_error(
        client.post("/v2/models/iris/infer", content=body, headers=headers),
        400,
        "shape [2, 5] does not match the model's [-1, 4]",
    )
    assert "needs" not in message


def test_v2_an_input_the_model_lacks_is_refused_before_its_data_is_decoded(
    client: TestClient,
) -> None:
    tensor = {"name": "pixels", "datatype": "BYTES", "shape": [1], "data": [[[[7]]]]}
    v2_error(
        client.post("/v2/models/iris/infer", json={"inputs": [tensor]}), 400, "no input 'pixels'"
    )


def test_v1_bytes_to_a_float_model_is_refused_before_the_data_is_decoded(
    client: TestClient,
) -> None:
    tensor = {"name": "input", "datatype": "BYTES", "data": [["a", 1, 2, 3]]}
    message = v1_error(
        client.post("/v1/jobs", json={"model": "iris", "inputs": [tensor]}),
        422,
        "invalid_input",
        "datatype BYTES does not match the model's FP32",
    )
    assert "strings" not in message


def test_v1_a_declared_shape_the_model_cannot_take_is_refused_first(client: TestClient) -> None:
    tensor = {"name": "input", "shape": [1, 5], "data": [1, 2, 3, 4]}
    v1_error(
        client.post("/v1/jobs", json={"model": "iris", "inputs": [tensor]}),
        422,
        "invalid_input",
        "shape [1, 5] does not match the model's [-1, 4]",
    )


# --- large bodies decode off the event loop --------------------------------------------------


def test_decode_body_runs_heavy_work_in_a_thread() -> None:
    async def where(heavy: bool) -> threading.Thread:
        return await decode_body(heavy, threading.current_thread)

    loop_thread = threading.current_thread()  # anyio.run runs the loop in this thread
    assert anyio.run(where, False) is loop_thread
    assert anyio.run(where, True) is not loop_thread


def test_large_valid_bodies_still_run(client: TestClient) -> None:
    rows = [[i % 17 + 0.125 for i in range(64)] for _ in range(3000)]
    body = orjson.dumps({"model": "digits", "data": rows})
    assert len(body) > OFF_LOOP_BYTES
    response = client.post(
        "/v1/jobs",
        content=body,
        headers={
            "Prefer": "wait=30",
            "Idempotency-Key": "large-body",
            "Content-Type": "application/json",
        },
    )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "succeeded"
    assert response.json()["rows"] == 3000
    tensor = {"name": "input", "datatype": "FP32", "shape": [3000, 64], "data": rows}
    response = client.post("/v2/models/digits/infer", json={"inputs": [tensor]})
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["shape"][0] == 3000


# --- deep nesting ----------------------------------------------------------------------------


def test_v2_bytes_nested_990_deep_is_a_400_that_says_what_to_do(
    client: TestClient, text_model: str
) -> None:
    data = b"[" * 990 + b'"a", "b"' + b"]" * 990  # built by hand: json.dumps would recurse
    body = (
        b'{"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1, 2], "data": ' + data + b"}]}"
    )
    response = client.post(f"/v2/models/{text_model}/infer", content=body)
    v2_error(response, 400, "nested more than 64", "send it flat")


def test_v2_bytes_nested_as_the_shape_runs(client: TestClient, text_model: str) -> None:
    tensor = {"name": "x", "datatype": "BYTES", "shape": [2, 2], "data": [["a", "b"], ["", "é"]]}
    response = client.post(f"/v2/models/{text_model}/infer", json={"inputs": [tensor]})
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == ["a", "b", "", "é"]


def test_v2_more_bytes_elements_than_the_shape_is_400(client: TestClient, text_model: str) -> None:
    raw = b"".join(struct.pack("<I", 1) + b"x" for _ in range(5))
    body, headers = binary_infer({"name": "x", "datatype": "BYTES", "shape": [1, 2]}, raw)
    v2_error(
        client.post(f"/v2/models/{text_model}/infer", content=body, headers=headers),
        400,
        "needs 2 BYTES elements",
        "more",
    )


# --- NaN and Infinity on /v1 -----------------------------------------------------------------

NON_FINITE = {
    "NaN": b'{"model": "iris", "data": [[NaN, 3.5, 1.4, 0.2]]}',
    "Infinity": b'{"model": "iris", "data": [[Infinity, 3.5, 1.4, 0.2]]}',
    "-Infinity": b'{"model": "iris", "data": [[5.1, -Infinity, 1.4, 0.2]]}',
    "past a double": b'{"model": "iris", "data": [[5.1, 3.5, 1e999, 0.2]]}',
    "inputs form": b'{"model": "iris", "inputs": [{"name": "input", "data": [[NaN, 1, 2, 3]]}]}',
}


@pytest.mark.parametrize("case", list(NON_FINITE))
def test_v1_refuses_nan_and_infinity(client: TestClient, case: str) -> None:
    response = client.post(
        "/v1/jobs", content=NON_FINITE[case], headers={"Content-Type": "application/json"}
    )
    v1_error(response, 422, "invalid_input", "finite numbers", "NaN or Infinity")


def test_v1_refuses_numbers_beyond_the_models_float_range(client: TestClient) -> None:
    response = client.post("/v1/jobs", json={"model": "iris", "data": [[5.1, 3.5, 1e39, 0.2]]})
    v1_error(response, 422, "invalid_input", "beyond FP32's range")


def test_nan_and_infinity_do_not_take_an_idempotency_key(client: TestClient) -> None:
    headers = {"Content-Type": "application/json", "Idempotency-Key": "non-finite"}
    for case in ("NaN", "Infinity"):
        response = client.post("/v1/jobs", content=NON_FINITE[case], headers=headers)
        v1_error(response, 422, "invalid_input")
    response = client.post(
        "/v1/jobs",
        json={"model": "iris", "data": [IRIS_ROW]},
        headers={**headers, "Prefer": "wait=10"},
    )
    assert response.status_code == 200 and response.json()["status"] == "succeeded", response.text


# --- parameters are bounded ------------------------------------------------------------------

BIG = {"note": "x" * (16 * 1024)}


def test_v2_parameters_over_the_bound_are_413_naming_the_setting(client: TestClient) -> None:
    tensor = {"name": "input", "datatype": "FP32", "shape": [1, 4], "data": IRIS_ROW}
    response = client.post("/v2/models/iris/infer", json={"inputs": [tensor], "parameters": BIG})
    v2_error(response, 413, "16384", "INFERHUB_MAX_PARAMETERS_BYTES")


def test_v1_parameters_over_the_bound_are_413_naming_the_setting(client: TestClient) -> None:
    response = client.post(
        "/v1/jobs", json={"model": "iris", "data": [IRIS_ROW], "parameters": BIG}
    )
    v1_error(response, 413, "parameters_too_large", "16384", "INFERHUB_MAX_PARAMETERS_BYTES")


def test_parameters_within_the_bound_are_taken(client: TestClient) -> None:
    small = {"note": "x" * 1000}
    tensor = {"name": "input", "datatype": "FP32", "shape": [1, 4], "data": IRIS_ROW}
    response = client.post("/v2/models/iris/infer", json={"inputs": [tensor], "parameters": small})
    assert response.status_code == 200, response.text
    response = client.post(
        "/v1/jobs",
        json={"model": "iris", "data": [IRIS_ROW], "parameters": small},
        headers={"Prefer": "wait=10"},
    )
    assert response.status_code == 200 and response.json()["status"] == "succeeded", response.text


def test_the_parameters_bound_is_a_setting(
    stack: Stack, worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    with stack.app(max_parameters_bytes=64) as c:
        response = c.post(
            "/v1/jobs", json={"model": "iris", "data": [IRIS_ROW], "parameters": {"n": "x" * 64}}
        )
        v1_error(response, 413, "parameters_too_large", "over the 64 allowed")
    assert Settings().max_parameters_bytes == 16 * 1024
    monkeypatch.setenv("INFERHUB_MAX_PARAMETERS_BYTES", "100")
    assert Settings().max_parameters_bytes == 100


def test_decode_inputs_refuses_nan_however_the_request_was_made(client: TestClient) -> None:
    """Not only JSON bodies: a request built in Python (the WebSocket's, a script's) too."""
    entry = client.get("/v1/models/iris").json()  # the catalogue's entry, as the hub holds it
    request = JobRequest(model="iris", data=[[1.0, float("-inf"), 2.0, 3.0]])
    with pytest.raises(InvalidInput, match="element 1 is NaN or infinite"):
        decode_inputs(entry, entry["latest"], request)
