"""The smaller corners of the V2 protocol, each served or refused clearly (HTTP and gRPC):
Triton's raw binary request (``Inference-Header-Content-Length: 0``), BF16, and sequence
batching's parameters; against a hub process and a real worker.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import ml_dtypes  # onnx's dependency; tritonclient sends BF16 from its bfloat16 arrays
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from helpers import wait_for
from stack import Hub, Stack
from test_v2 import ROWS, local_run
from tritonclient.utils import InferenceServerException

from cli.processes import free_port


@pytest.fixture(scope="module")
def hub(stack: Stack) -> Hub:
    stack.first_worker(wait=False)
    return stack.hub("gaps", grpc_port=free_port())


@pytest.fixture(scope="module")
def http(hub: Hub) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hub.url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def gc(hub: Hub) -> Iterator[tg.InferenceServerClient]:
    with tg.InferenceServerClient(f"127.0.0.1:{hub.env['INFERHUB_GRPC_PORT']}") as client:
        wait_for(client.is_server_ready, what="the gRPC hub to be ready")
        yield client


@pytest.fixture(scope="module")
def tc(hub: Hub) -> Iterator[th.InferenceServerClient]:
    client = th.InferenceServerClient(hub.url.removeprefix("http://"))
    yield client
    client.close()


RAW = {"Inference-Header-Content-Length": "0", "Content-Type": "application/octet-stream"}


def test_a_raw_binary_request_is_served(http: httpx.Client, model_repo: Path) -> None:
    rows = ROWS["iris"][:3].astype(np.float32)
    answer = http.post("/v2/models/iris/infer", content=rows.tobytes(), headers=RAW)
    assert answer.status_code == 200, answer.text
    outputs = {o["name"]: o for o in answer.json()["outputs"]}
    expected = local_run(model_repo, "iris", rows)
    assert outputs["label"]["shape"] == [3]
    assert outputs["label"]["data"] == expected["label"].tolist()
    np.testing.assert_allclose(
        np.array(outputs["probabilities"]["data"]).reshape(3, 3),
        expected["probabilities"],
        rtol=1e-6,
    )


def test_a_raw_binary_request_the_model_cannot_take_is_refused(http: httpx.Client) -> None:
    partial = http.post("/v2/models/iris/infer", content=b"\x00" * 20, headers=RAW)
    assert partial.status_code == 400
    assert (
        "20 bytes is not whole rows of input 'input' (FP32 [-1, 4]: 16 bytes a row)"
        in (partial.json()["error"])
    )
    empty = http.post("/v2/models/iris/infer", content=b"", headers=RAW)
    assert empty.status_code == 400 and "not whole rows" in empty.json()["error"]
    two_inputs = http.post("/v2/models/pair/infer", content=b"\x00" * 16, headers=RAW)
    assert two_inputs.status_code == 400
    assert "for a model of one input; 'pair' has 2" in two_inputs.json()["error"]


def test_bf16_is_refused_with_the_reason(http: httpx.Client, gc: tg.InferenceServerClient) -> None:
    body = {
        "inputs": [{"name": "input", "shape": [1, 4], "datatype": "BF16", "data": [1, 2, 3, 4]}]
    }
    answer = http.post("/v2/models/iris/infer", json=body)
    assert answer.status_code == 400 and "BF16 is not supported" in answer.json()["error"]
    made = tg.InferInput("input", [1, 4], "BF16")
    made.set_data_from_numpy(np.ones((1, 4), dtype=ml_dtypes.bfloat16))
    with pytest.raises(InferenceServerException) as refused:
        gc.infer("iris", [made])
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "BF16 is not supported" in refused.value.message()


def test_sequence_parameters_are_refused(
    tc: th.InferenceServerClient, gc: tg.InferenceServerClient
) -> None:
    rows = ROWS["iris"][:1].astype(np.float32)
    made = th.InferInput("input", [1, 4], "FP32")
    made.set_data_from_numpy(rows)
    with pytest.raises(InferenceServerException) as http_refused:
        tc.infer("iris", [made], sequence_id=7, sequence_start=True)
    assert http_refused.value.status() == "400"
    assert "sequence_id, sequence_start ask for sequence batching" in http_refused.value.message()
    grpc_input = tg.InferInput("input", [1, 4], "FP32")
    grpc_input.set_data_from_numpy(rows)
    with pytest.raises(InferenceServerException) as grpc_refused:
        gc.infer("iris", [grpc_input], sequence_id=7, sequence_end=True)
    assert grpc_refused.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "sequence batching" in grpc_refused.value.message()
