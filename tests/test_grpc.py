"""V2 over gRPC end to end: ``tritonclient.grpc`` (sync and aio), Triton's own generated stub for
the messages no client library would send, and KServe's ``InferenceGRPCClient`` (in a process of
its own: its protos and tritonclient's clash in one process), against hubs served by uvicorn
with real arq workers, Redis and onnxruntime.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tg
import tritonclient.grpc.aio as tga
import uvicorn
from google.protobuf import json_format
from helpers import ROOT, wait_for
from stack import Stack, Worker
from test_v2 import ROWS, build_identity, local_run
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from cli.processes import free_port, start_cli, stop
from contract.settings import Settings
from contract.tensors import datatype_of
from hub.app import create_app
from hub.auth import new_key

MAX_BODY = 1024 * 1024  # the test hub's message limit, small so that RESOURCE_EXHAUSTED is cheap
IDENTITY = {"BYTES": "gid_bytes", "FP16": "gid_fp16", "INT8": "gid_int8", "BOOL": "gid_bool"}


# --- fixtures --------------------------------------------------------------------------------


@contextlib.contextmanager
def serving(settings: Settings) -> Iterator[tuple[str, str]]:
    """The hub (HTTP and gRPC) served by uvicorn in a thread: its HTTP and gRPC addresses."""
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=settings.port, log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, name="uvicorn-grpc", daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, timeout=20, what="uvicorn to start")
        yield f"http://127.0.0.1:{settings.port}", f"127.0.0.1:{settings.grpc_port}"
    finally:
        server.should_exit = True
        thread.join(10)


def hub_settings(settings: Settings, **changes: Any) -> Settings:
    ports = {"port": free_port(), "grpc_port": free_port(), "max_body_bytes": MAX_BODY}
    return settings.model_copy(update={**ports, **changes})


@pytest.fixture(scope="module")
def hub(settings: Settings, worker: Worker) -> Iterator[tuple[str, str]]:
    with serving(hub_settings(settings)) as urls:
        with tg.InferenceServerClient(urls[1]) as client:
            wait_for(client.is_server_ready, what="the gRPC hub to be ready")
        yield urls


@pytest.fixture(scope="module")
def url(hub: tuple[str, str]) -> str:
    return hub[1]


@pytest.fixture(scope="module")
def client(url: str) -> Iterator[tg.InferenceServerClient]:
    with tg.InferenceServerClient(url) as triton:
        yield triton


@pytest.fixture(scope="module")
def stub(url: str) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    """Triton's own generated stub (tritonclient's copy of the protos), for any message."""
    with grpc.insecure_channel(url, options=[("grpc.max_send_message_length", -1)]) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def identity_models(
    stack: Stack, client: tg.InferenceServerClient, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """Identity models of a few datatypes, in pool ``gid`` with a worker of their own."""
    repo = tmp_path_factory.mktemp("gid") / "models"
    for datatype, name in IDENTITY.items():
        build_identity(repo / name, datatype)
        (repo / name / "config.toml").write_text('pool = "gid"\nmax_batch_size = 8\n')
    stack.worker("gid", models=repo, pool="gid")
    # ready as the hub sees them: unknown (NOT_FOUND) until its catalogue has them
    wait_for(
        lambda: all(
            _answers(functools.partial(client.is_model_ready, m)) for m in IDENTITY.values()
        ),
        what="the identity models to be ready",
    )
    return IDENTITY


@pytest.fixture(scope="module")
def orphan(client: tg.InferenceServerClient, orphan_model: str) -> str:
    """The model whose pool has no live worker, once this hub's catalogue (cached for a
    second) says so."""

    def unavailable() -> bool:
        index = {m.name: m.state for m in client.get_model_repository_index().models}
        known = index.get(orphan_model) == "UNAVAILABLE"
        return known and not client.is_model_ready(orphan_model)

    wait_for(unavailable, what="the orphan model to show as unavailable")
    return orphan_model


def triton_input(rows: np.ndarray, name: str = "input") -> tg.InferInput:
    tensor = tg.InferInput(name, list(rows.shape), datatype_of(rows))
    return tensor.set_data_from_numpy(rows)


def code(exc: pytest.ExceptionInfo[InferenceServerException]) -> str:
    return str(exc.value.status())


# --- health, metadata, config, index ---------------------------------------------------------


def test_the_committed_stubs_are_what_the_script_generates(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    subprocess.run(["bash", str(ROOT / "scripts/gen_grpc.sh"), str(tmp_path)], env=env, check=True)
    generated = sorted(p.name for p in tmp_path.iterdir())
    assert generated == [
        "grpc_service_pb2.py",
        "grpc_service_pb2.pyi",
        "grpc_service_pb2_grpc.py",
        "model_config_pb2.py",
        "model_config_pb2.pyi",
    ]
    for name in generated:
        committed = (ROOT / "hub/grpc/proto" / name).read_text()
        assert (tmp_path / name).read_text() == committed, f"run scripts/gen_grpc.sh: {name}"


def test_health_and_server_metadata(client: tg.InferenceServerClient, orphan: str) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("iris") and client.is_model_ready("iris", "1")
    assert not client.is_model_ready(orphan)  # known, but no live worker of its pool
    with pytest.raises(InferenceServerException) as caught:
        client.is_model_ready("nope")
    assert (
        code(caught) == "StatusCode.NOT_FOUND" and "'nope' does not exist" in caught.value.message()
    )
    metadata = client.get_server_metadata()
    assert metadata.name == "inferhub" and "binary_tensor_data" in metadata.extensions


@pytest.mark.parametrize("model", list(ROWS))
def test_metadata_and_config_are_what_http_says(
    client: tg.InferenceServerClient, hub: tuple[str, str], model: str
) -> None:
    http = httpx.get(f"{hub[0]}/v2/models/{model}").json()
    metadata = client.get_model_metadata(model)
    assert (metadata.name, list(metadata.versions), metadata.platform) == (
        http["name"],
        http["versions"],
        http["platform"],
    )
    got = [
        {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
        for t in [*metadata.inputs, *metadata.outputs]
    ]
    assert got == http["inputs"] + http["outputs"]
    config = client.get_model_config(model).config
    expected = httpx.get(f"{hub[0]}/v2/models/{model}/config").json()
    assert config == json_format.ParseDict(expected, model_config_pb2.ModelConfig())
    assert config.max_batch_size == 256 and config.input[0].dims == [len(ROWS[model][0])]


def test_repository_index(
    client: tg.InferenceServerClient,
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
    orphan: str,
) -> None:
    index = {(m.name, m.version): m for m in client.get_model_repository_index().models}
    assert index[("iris", "1")].state == "READY"
    entry = index[(orphan, "1")]
    assert entry.state == "UNAVAILABLE" and "pool 'nobody'" in entry.reason
    ready = stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(ready=True)).models
    assert {m.state for m in ready} == {"READY"} and orphan not in {m.name for m in ready}


# --- inference -------------------------------------------------------------------------------


@pytest.mark.parametrize("model", list(ROWS))
def test_infer_equals_onnxruntime(
    client: tg.InferenceServerClient, model_repo: Path, model: str
) -> None:
    rows = ROWS[model].astype(np.float32)
    result = client.infer(model, [triton_input(rows)], request_id="r1")
    expected = local_run(model_repo, model, rows)
    assert result.get_response().id == "r1"
    np.testing.assert_array_equal(result.as_numpy("label"), expected["label"])
    np.testing.assert_allclose(
        result.as_numpy("probabilities"), expected["probabilities"], rtol=1e-6
    )
    only = client.infer(model, [triton_input(rows)], outputs=[tg.InferRequestedOutput("label")])
    assert [o.name for o in only.get_response().outputs] == ["label"]


@pytest.mark.parametrize("model", list(ROWS))
async def test_infer_with_the_aio_client(url: str, model_repo: Path, model: str) -> None:
    rows = ROWS[model].astype(np.float32)
    async with tga.InferenceServerClient(url) as client:
        assert await client.is_server_ready()
        result = await client.infer(model, [triton_input(rows)], priority=1, timeout=10_000_000)
    expected = local_run(model_repo, model, rows)
    np.testing.assert_array_equal(result.as_numpy("label"), expected["label"])
    np.testing.assert_allclose(
        result.as_numpy("probabilities"), expected["probabilities"], rtol=1e-6
    )


def test_typed_contents_are_answered_in_kind(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, model_repo: Path
) -> None:
    rows = ROWS["iris"].astype(np.float32)
    request = service_pb2.ModelInferRequest(model_name="iris", id="typed")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=list(rows.shape))
    tensor.contents.fp32_contents.extend(rows.reshape(-1).tolist())
    answer = stub.ModelInfer(request)
    assert not answer.raw_output_contents
    outputs = {o.name: o for o in answer.outputs}
    expected = local_run(model_repo, "iris", rows)
    assert list(outputs["label"].contents.int64_contents) == expected["label"].tolist()
    probabilities = np.array(outputs["probabilities"].contents.fp32_contents, np.float32)
    np.testing.assert_allclose(probabilities.reshape(5, 3), expected["probabilities"], rtol=1e-6)


def test_datatypes_raw_and_typed(
    client: tg.InferenceServerClient,
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
    identity_models: dict[str, str],
) -> None:
    arrays = {
        "BYTES": np.array([["a", "é", ""], ["x", "yz", "0"]], dtype=object),
        "FP16": np.array([[0.5, -1.0, 65504.0]], np.float16),
        "INT8": np.array([[-128, 0, 127]], np.int8),
        "BOOL": np.array([[True, False, True]]),
    }
    for datatype, model in identity_models.items():
        array = arrays[datatype]
        result = client.infer(model, [triton_input(array, "x")])
        got = result.as_numpy("y")
        expected = (
            np.vectorize(str.encode, otypes=[object])(array) if datatype == "BYTES" else array
        )
        assert got.tolist() == expected.tolist() and got.dtype == expected.dtype, datatype
    request = service_pb2.ModelInferRequest(model_name=identity_models["BYTES"])
    tensor = request.inputs.add(name="x", datatype="BYTES", shape=[1, 3])
    tensor.contents.bytes_contents.extend([b"a", "é".encode(), b""])
    answer = stub.ModelInfer(request)
    assert list(answer.outputs[0].contents.bytes_contents) == [b"a", "é".encode(), b""]
    tensor.contents.bytes_contents[1] = b"\xff"  # onnxruntime's strings are UTF-8 text
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "BYTES element 1 is not UTF-8 text" in caught.value.details()


# --- errors ----------------------------------------------------------------------------------


def raw_request(model: str, shape: list[int], raw: bytes, **fields: Any) -> Any:
    request = service_pb2.ModelInferRequest(model_name=model, raw_input_contents=[raw], **fields)
    request.inputs.add(name="input", datatype="FP32", shape=shape)
    return request


ROW = np.arange(4, dtype="<f4").tobytes()

BAD_REQUESTS: dict[str, tuple[Any, grpc.StatusCode, str]] = {
    "an unknown model": (
        raw_request("nope", [1, 4], ROW),
        grpc.StatusCode.NOT_FOUND,
        "model 'nope' does not exist",
    ),
    "an unknown version": (
        raw_request("iris", [1, 4], ROW, model_version="9"),
        grpc.StatusCode.NOT_FOUND,
        "has no version '9'",
    ),
    "a wrong shape": (
        raw_request("iris", [1, 5], ROW + ROW[:4]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "shape [1, 5] does not match the model's [-1, 4]",
    ),
    "raw contents of the wrong size": (
        raw_request("iris", [2, 4], ROW),
        grpc.StatusCode.INVALID_ARGUMENT,
        "needs 32 bytes, raw_input_contents[0] has 16",
    ),
    "an unknown input": (
        service_pb2.ModelInferRequest(
            model_name="iris",
            inputs=[{"name": "nope", "datatype": "FP32", "shape": [1, 4]}],
            raw_input_contents=[ROW],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "has no input 'nope'",
    ),
    "an unknown output": (
        raw_request("iris", [1, 4], ROW, outputs=[{"name": "nope"}]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "has no output 'nope'",
    ),
    "no rows": (
        raw_request("iris", [0, 4], b""),
        grpc.StatusCode.INVALID_ARGUMENT,
        "the request has no rows",
    ),
    "a model that fails": (
        service_pb2.ModelInferRequest(
            model_name="failing",
            inputs=[{"name": "x", "datatype": "FP32", "shape": [2, 4]}],
            raw_input_contents=[ROW * 2],
        ),
        grpc.StatusCode.INTERNAL,
        "",
    ),
    "a message over the limit": (
        raw_request("iris", [MAX_BODY // 16 + 1, 4], ROW * (MAX_BODY // 16 + 1)),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "larger than max",
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_tritons_codes(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, case: str
) -> None:
    request, status, fragment = BAD_REQUESTS[case]
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request)
    assert caught.value.code() == status, caught.value.details()
    assert fragment in caught.value.details()


def test_what_is_not_served_is_unimplemented_and_the_hub_stays_up(
    client: tg.InferenceServerClient,
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
    url: str,
    orphan: str,
) -> None:
    calls = [
        lambda: stub.SystemSharedMemoryStatus(service_pb2.SystemSharedMemoryStatusRequest()),
        lambda: stub.CudaSharedMemoryRegister(service_pb2.CudaSharedMemoryRegisterRequest()),
        lambda: stub.LogSettings(service_pb2.LogSettingsRequest()),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as caught:
            call()
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "not" in caught.value.details()
    with pytest.raises(InferenceServerException) as unready:
        client.infer(orphan, [triton_input(ROWS["iris"][:1].astype(np.float32))])
    assert code(unready) == "StatusCode.UNAVAILABLE" and "not ready" in unready.value.message()
    # bytes that are no ModelInferRequest at all, alone and in a stream before a good one
    garbage = b"\x0a\xff\xff\xff\xff\x0f"
    good = raw_request("iris", [1, 4], ROW, id="good").SerializeToString()
    with grpc.insecure_channel(url) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(garbage)
        stream = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")
        answers = [
            service_pb2.ModelStreamInferResponse.FromString(a)
            for a in stream(iter([garbage, good]))
        ]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid inference.ModelInferRequest" in caught.value.details()
    assert sorted((a.infer_response.id, a.error_message[:30]) for a in answers) == [
        ("", "the message is not a valid inf"),
        ("good", ""),
    ]
    assert client.is_server_live()
    assert client.infer("iris", [triton_input(ROWS["iris"][:1].astype(np.float32))])


# --- auth ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed(
    settings: Settings, worker: Worker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, dict[str, str]]]:
    path = tmp_path_factory.mktemp("grpc-keys") / "keys.toml"
    keys = {
        "submitter": new_key(path, "acme", ["submit", "read"]),
        "reader": new_key(path, "acme", ["read"]),
    }
    with serving(hub_settings(settings, api_keys_file=path)) as (_, url):
        yield url, keys


def test_a_bearer_key_in_metadata(keyed: tuple[str, dict[str, str]]) -> None:
    url, keys = keyed
    rows = [triton_input(ROWS["iris"][:1].astype(np.float32))]

    def bearer(name: str) -> dict[str, str]:
        return {"authorization": f"Bearer {keys[name]}"}

    with tg.InferenceServerClient(url) as client:
        assert client.is_server_live()  # health needs no key, as over HTTP
        wait_for(client.is_server_ready, what="the keyed hub to be ready")
        for headers, status in [
            (None, "StatusCode.UNAUTHENTICATED"),
            ({"authorization": "Bearer ih_nope_nope"}, "StatusCode.UNAUTHENTICATED"),
            (bearer("reader"), "StatusCode.PERMISSION_DENIED"),
        ]:
            with pytest.raises(InferenceServerException) as caught:
                client.infer("iris", rows, headers=headers)
            assert code(caught) == status
        assert client.get_model_metadata("iris", headers=bearer("reader")).name == "iris"
        assert client.infer("iris", rows, headers=bearer("submitter")).as_numpy("label") == [0]
    with grpc.insecure_channel(url) as channel:
        stream = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(
            iter([service_pb2.ModelInferRequest(model_name="iris")])
        )
        with pytest.raises(grpc.RpcError) as refused:
            next(stream)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


# --- ModelStreamInfer ------------------------------------------------------------------------


def slow_run(model_repo: Path, rows: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model_repo / "slow" / "1" / "model.onnx"))
    return session.run(None, {"x": rows})[0]


def test_a_stream_answers_online_bulk_and_bad_requests(
    client: tg.InferenceServerClient, hub: tuple[str, str], model_repo: Path
) -> None:
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    bulk = np.random.default_rng(7).standard_normal((16, 16)).astype(np.float32)  # slow: 2 a batch
    try:
        client.async_stream_infer("slow", [triton_input(bulk, "x")], request_id="bulk")
        client.async_stream_infer(
            "iris", [triton_input(ROWS["iris"][:1].astype(np.float32))], request_id="one"
        )
        client.async_stream_infer("nope", [triton_input(bulk, "x")], request_id="bad")
        progress, final, online, errors = [], None, None, []
        while final is None or online is None or not errors:
            result, error = answers.get(timeout=60)
            if error is not None:
                errors.append(error.message())
                continue
            response = result.get_response()
            if response.id == "one":
                online = result
            elif response.parameters["triton_final_response"].bool_param:
                final = result
            else:
                progress.append(response)
    finally:
        client.stop_stream()
    assert online.as_numpy("label") == [0]
    assert errors == ["model 'nope' does not exist"]
    dones = [p.parameters["done"].int64_param for p in progress]
    assert dones == list(range(0, 17, 2))  # queued, then every chunk of 2 rows
    assert {p.parameters["total"].int64_param for p in progress} == {16}
    assert all(not p.outputs for p in progress)
    np.testing.assert_allclose(final.as_numpy("y"), slow_run(model_repo, bulk), rtol=1e-5)
    job_id = final.get_response().parameters["job_id"].string_param
    job = httpx.get(f"{hub[0]}/v1/jobs/{job_id}").json()
    assert (job["status"], job["rows"], job["model"]) == ("succeeded", 16, "slow")


async def test_a_bulk_stream_with_the_aio_client(url: str, model_repo: Path) -> None:
    rows = np.tile(ROWS["iris"], (60, 1)).astype(np.float32)  # 300 rows: over iris's 256

    async def requests() -> AsyncIterator[dict[str, Any]]:
        yield {"model_name": "iris", "inputs": [triton_input(rows)], "request_id": "big"}

    results = []
    async with tga.InferenceServerClient(url) as client:
        async for result, error in client.stream_infer(requests()):
            assert error is None, error
            results.append(result.get_response())
            if results[-1].parameters["triton_final_response"].bool_param:
                break
    dones = [r.parameters["done"].int64_param for r in results]
    assert dones == [0, 256, 300, 300]
    final = tg.InferResult(results[-1])
    expected = local_run(model_repo, "iris", rows)
    np.testing.assert_array_equal(final.as_numpy("label"), expected["label"])


# --- other clients and the CLI ---------------------------------------------------------------


def test_kserves_grpc_client(url: str, model_repo: Path) -> None:
    """KServe's InferenceGRPCClient, raw and typed contents, run by tests/kserve_grpc_client.py
    in a process of its own; it prints what it got as JSON."""
    script = Path(__file__).parent / "kserve_grpc_client.py"
    done = subprocess.run(
        [sys.executable, str(script), url], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.splitlines()[-1])
    assert got["live"] and got["ready"] and got["model_ready"]
    expected = local_run(model_repo, "iris", ROWS["iris"].astype(np.float32))
    for form in ("raw", "typed"):
        assert got[form]["label"] == expected["label"].tolist(), form
        np.testing.assert_allclose(got[form]["probabilities"], expected["probabilities"], rtol=1e-6)
    assert got["unknown_model"] == "StatusCode.NOT_FOUND"


def test_inferhub_serve_serves_grpc_and_refuses_a_busy_grpc_port(
    settings: Settings, worker: Worker, tmp_path: Path
) -> None:
    grpc_port = free_port()
    env = {
        "INFERHUB_REDIS_URL": settings.redis_url,
        "INFERHUB_PORT": str(free_port()),
        "INFERHUB_GRPC_PORT": str(grpc_port),
    }
    log = (tmp_path / "hub.log").open("wb")
    hub = start_cli("serve", env=env, log=log)
    try:
        with tg.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client:
            wait_for(
                lambda: hub.poll() is None and _answers(client.is_server_ready),
                timeout=60,
                what="gRPC of serve",
            )
            assert client.infer("iris", [triton_input(ROWS["iris"][:1].astype(np.float32))])
        second = subprocess.run(
            [sys.executable, "-m", "cli", "serve"],
            env={**os.environ, **env, "INFERHUB_PORT": str(free_port())},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 2
        assert f"gRPC port {grpc_port} is in use; pass --grpc-port" in second.stderr
    finally:
        stop([hub])
        log.close()


def _answers(ask: Callable[[], bool]) -> bool:
    """What a readiness call says; False while it fails (not up yet, not known yet)."""
    try:
        return ask()
    except InferenceServerException:
        return False
