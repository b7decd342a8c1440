"""Triton's repository extension end to end: ``load_model`` / ``unload_model`` of tritonclient
(HTTP and gRPC) change what a running worker (``inferhub worker``, a real process) serves, an
unload lets the work in flight finish, and a version dropped into the repository folder is
served by the running worker (its poll) while the old one is retired.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from helpers import IR_VERSION, OPSET, ROOT, build_slow, wait_for
from onnx import TensorProto, helper, numpy_helper
from stack import Hub, Stack, Stacks, Worker
from test_v2 import ROWS
from tritonclient.utils import InferenceServerException

from cli.processes import free_port


def save_scale(folder: Path, version: int) -> None:
    """``y = x * version`` (x FP32 [-1, 2]) as ``folder/<version>/model.onnx``, written beside
    and renamed into place, so that a polling worker never reads half a file."""
    factor = numpy_helper.from_array(np.array([float(version)], dtype=np.float32), "k")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "k"], ["y"])],
        "scale",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        initializer=[factor],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    staging = folder.parent / f".{folder.name}-{version}"
    staging.mkdir(parents=True)
    onnx.save(model, staging / "model.onnx")
    os.rename(staging, folder / str(version))


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("control") / "models"
    shutil.copytree(ROOT / "models" / "iris", root / "iris")
    build_slow(root / "slow")
    (root / "scale").mkdir()
    (root / "scale" / "config.toml").write_text("latest_versions = 1\n")
    save_scale(root / "scale", 1)
    return root


@pytest.fixture(scope="module")
def stack(stacks: Stacks) -> Iterator[Stack]:
    with stacks("control") as made:
        yield made


@pytest.fixture(scope="module")
def worker(stack: Stack, repo: Path) -> Worker:
    return stack.worker("control-worker", models=repo, repository_poll_s=0.2)


@pytest.fixture(scope="module")
def hub(stack: Stack, worker: Worker) -> Hub:
    return stack.hub("control-hub", grpc_port=free_port())


@pytest.fixture(scope="module")
def tc(hub: Hub) -> Iterator[th.InferenceServerClient]:
    client = th.InferenceServerClient(hub.url.removeprefix("http://"))
    yield client
    client.close()


@pytest.fixture(scope="module")
def gc(hub: Hub) -> Iterator[tg.InferenceServerClient]:
    with tg.InferenceServerClient(f"127.0.0.1:{hub.env['INFERHUB_GRPC_PORT']}") as client:
        yield client


def iris_infer(client: th.InferenceServerClient | tg.InferenceServerClient) -> np.ndarray:
    rows = ROWS["iris"][:2].astype(np.float32)
    kind = th if isinstance(client, th.InferenceServerClient) else tg
    made = kind.InferInput("input", [2, 4], "FP32")
    made.set_data_from_numpy(rows)
    result = client.infer("iris", [made])
    return np.asarray(result.as_numpy("label"))


def test_advertised_and_listed(tc: th.InferenceServerClient, hub: Hub) -> None:
    assert "model_repository" in tc.get_server_metadata()["extensions"]
    listed = httpx.get(f"{hub.url}/v2/models", timeout=10).json()
    assert listed == {"models": ["iris", "scale", "slow"]}


def test_unload_then_load(
    tc: th.InferenceServerClient, gc: tg.InferenceServerClient, stack: Stack, worker: Worker
) -> None:
    labels = iris_infer(tc)
    tc.unload_model("iris")
    # every live worker applied it before the call returned: nothing serves iris now
    record = worker.record(stack.redis)
    assert record is not None and "iris" not in record["models"]
    assert not tc.is_model_ready("iris")
    with pytest.raises(InferenceServerException) as gone:
        iris_infer(tc)
    assert gone.value.status() == "404" and "is unloaded" in gone.value.message()
    index = {(m["name"], m.get("version")): m for m in tc.get_model_repository_index()}
    assert index["iris", "1"]["state"] == "UNAVAILABLE"
    assert index["iris", "1"]["reason"] == "unloaded"
    assert index["scale", "1"]["state"] == "READY"
    grpc_index = gc.get_model_repository_index(as_json=True)["models"]
    assert {"name": "iris", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"} in (
        grpc_index
    )

    gc.load_model("iris")
    assert gc.is_model_ready("iris") and tc.is_model_ready("iris")
    np.testing.assert_array_equal(iris_infer(gc), labels)
    record = worker.record(stack.redis)
    assert record is not None and "iris" in record["models"]


def test_unload_lets_the_work_in_flight_finish(
    tc: th.InferenceServerClient, hub: Hub, stack: Stack
) -> None:
    rows = 3000  # in chunks of 2 (slow's max_batch_size): a job that runs for a while
    data = np.zeros((rows, 16), dtype=np.float32).tolist()
    body = {
        "model": "slow",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [rows, 16], "data": data}],
    }
    with httpx.Client(base_url=hub.url, timeout=60) as http:
        job = http.post("/v1/jobs", json=body).json()["id"]

        def running() -> bool:
            record = http.get(f"/v1/jobs/{job}").json()
            assert record["status"] in ("queued", "started"), record
            return bool((record.get("progress") or {}).get("done"))

        wait_for(running, timeout=60, what="the slow job to be running")
        tc.unload_model("slow")  # returns once the job's rows are all run
        final = wait_for(
            lambda: (r := http.get(f"/v1/jobs/{job}").json())["status"] != "started" and r,
            timeout=60,
            what="the slow job to end",
        )
        assert final["status"] == "succeeded", final
        refused = http.post("/v1/jobs", json=body)
        assert refused.status_code == 404 and "is unloaded" in refused.text
    tc.load_model("slow")
    assert tc.is_model_ready("slow")


def test_load_errors(tc: th.InferenceServerClient, repo: Path) -> None:
    with pytest.raises(InferenceServerException) as unknown:
        tc.load_model("nope")
    assert unknown.value.status() == "400"
    assert "no live worker has it in its model repository" in unknown.value.message()
    (repo / "garbage" / "1").mkdir(parents=True)
    (repo / "garbage" / "1" / "model.onnx").write_bytes(b"not onnx at all")
    with pytest.raises(InferenceServerException) as broken:
        tc.load_model("garbage")
    assert broken.value.status() == "400" and "failed to load 'garbage'" in broken.value.message()
    with pytest.raises(InferenceServerException) as bad_name:
        tc.unload_model("two words")
    assert bad_name.value.status() == "400"
    with pytest.raises(InferenceServerException) as never:
        tc.unload_model("never_was")
    assert never.value.status() == "404"


def test_a_model_dropped_in_is_loaded(tc: th.InferenceServerClient, repo: Path) -> None:
    staging = repo.parent / "iris_copy"
    shutil.copytree(ROOT / "models" / "iris", staging)
    os.rename(staging, repo / "iris_copy")
    tc.load_model("iris_copy")  # at once, without waiting for the poll
    assert tc.is_model_ready("iris_copy")


def test_a_new_version_replaces_the_old_one(tc: th.InferenceServerClient, repo: Path) -> None:
    x = np.array([[1.0, 2.0]], dtype=np.float32)

    def scaled(version: str = "") -> np.ndarray:
        made = th.InferInput("x", [1, 2], "FP32")
        made.set_data_from_numpy(x)
        return np.asarray(tc.infer("scale", [made], model_version=version).as_numpy("y"))

    np.testing.assert_array_equal(scaled(), x)
    policy = tc.get_model_config("scale")["version_policy"]
    assert policy == {"latest": {"num_versions": 1}}
    save_scale(repo / "scale", 2)  # the running worker's poll finds it
    wait_for(
        lambda: tc.get_model_metadata("scale")["versions"] == ["2"],
        timeout=30,
        what="version 2 to replace version 1",
    )
    np.testing.assert_array_equal(scaled(), 2 * x)
    np.testing.assert_array_equal(scaled("2"), 2 * x)
    with pytest.raises(InferenceServerException) as old:
        scaled("1")
    assert old.value.status() == "404" and "no version '1'" in old.value.message()
