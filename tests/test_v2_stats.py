"""Triton's statistics extension end to end: ``get_inference_statistics`` of tritonclient over
HTTP and gRPC against a hub process (``inferhub serve``) and two real workers of one pool,
moving after requests by what was really run (requests, rows, onnxruntime calls, batch sizes).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from helpers import wait_for
from stack import Hub, Stack, Stacks
from test_v2 import ROWS
from tritonclient.utils import InferenceServerException

from cli.processes import free_port

DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


@pytest.fixture(scope="module")
def stack(stacks: Stacks) -> Iterator[Stack]:
    """Two workers of the default pool, so that the counts are summed over workers."""
    with stacks("stats", workers=2) as made:
        yield made


@pytest.fixture(scope="module")
def hub(stack: Stack) -> Hub:
    return stack.hub("stats-hub", grpc_port=free_port())


@pytest.fixture(scope="module")
def http_client(hub: Hub) -> Iterator[th.InferenceServerClient]:
    client = th.InferenceServerClient(hub.url.removeprefix("http://"), concurrency=8)
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc_client(hub: Hub) -> Iterator[tg.InferenceServerClient]:
    with tg.InferenceServerClient(f"127.0.0.1:{hub.env['INFERHUB_GRPC_PORT']}") as client:
        wait_for(client.is_server_ready, what="the gRPC hub to be ready")
        yield client


def iris_input(rows: int, http: bool = True) -> Any:
    data = ROWS["iris"][:rows].astype(np.float32)
    made = (th if http else tg).InferInput("input", list(data.shape), "FP32")
    made.set_data_from_numpy(data)
    return made


def one(stats: dict[str, Any], version: str = "1") -> dict[str, Any]:
    (found,) = [s for s in stats["model_stats"] if s["version"] == version]
    return found


def count(stats: dict[str, Any], name: str) -> int:
    return int(stats["inference_stats"][name]["count"])


def settled(
    read: Callable[[], dict[str, Any]], before: dict[str, Any], name: str, more: int
) -> dict[str, Any]:
    """The statistics once ``more`` requests more have ended as ``name``: a busy worker sends
    its counts with a reply at most once a second, else with its next heartbeat."""

    def arrived() -> dict[str, Any] | None:
        now = read()
        assert count(now, name) - count(before, name) <= more, now
        return now if count(now, name) - count(before, name) == more else None

    return wait_for(arrived, timeout=30, what=f"{more} more {name} in the statistics")


def test_statistics_are_advertised(http_client: th.InferenceServerClient) -> None:
    assert "statistics" in http_client.get_server_metadata()["extensions"]


def test_http_statistics_move_after_requests(http_client: th.InferenceServerClient) -> None:
    before = one(http_client.get_inference_statistics("iris"))
    requests, rows = 24, 3
    # concurrent requests, so that some share an onnxruntime call on one of the two workers
    pending = [http_client.async_infer("iris", [iris_input(rows)]) for _ in range(requests)]
    for request in pending:
        request.get_result()
    after = settled(
        lambda: one(http_client.get_inference_statistics("iris", "1")), before, "success", requests
    )

    assert after["name"] == "iris" and after["version"] == "1"
    assert count(after, "success") - count(before, "success") == requests
    assert count(after, "fail") == count(before, "fail")
    assert after["inference_count"] - before["inference_count"] == requests * rows
    executions = after["execution_count"] - before["execution_count"]
    assert 1 <= executions <= requests
    for name in DURATIONS[2:]:  # queue and compute: one per successful request
        assert count(after, name) - count(before, name) == requests
    for name in ("success", "compute_infer"):
        assert after["inference_stats"][name]["ns"] > before["inference_stats"][name]["ns"]
    # each execution is in the histogram of batch sizes, by its rows
    batches = {b["batch_size"]: b["compute_infer"]["count"] for b in after["batch_stats"]}
    assert sum(batches.values()) == after["execution_count"]
    assert sum(size * n for size, n in batches.items()) == after["inference_count"]
    assert all(size % rows == 0 for size in batches)  # whole requests of 3 rows
    assert after["last_inference"] >= before["last_inference"] and after["last_inference"] > 0


def test_failures_are_counted(http_client: th.InferenceServerClient) -> None:
    before = one(http_client.get_inference_statistics("failing"))
    data = np.zeros((2, 4), dtype=np.float32)  # two rows into a fixed [1, 4]: a run-time error
    made = th.InferInput("x", [2, 4], "FP32")
    made.set_data_from_numpy(data)
    with pytest.raises(InferenceServerException, match="inference failed"):
        http_client.infer("failing", [made])
    after = settled(lambda: one(http_client.get_inference_statistics("failing")), before, "fail", 1)
    assert count(after, "fail") - count(before, "fail") == 1
    assert count(after, "success") == count(before, "success")


def test_grpc_statistics_move_after_requests(grpc_client: tg.InferenceServerClient) -> None:
    before = one(grpc_client.get_inference_statistics("iris", as_json=True))
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: grpc_client.infer("iris", [iris_input(2, http=False)]), range(8)))
    settled(
        lambda: one(grpc_client.get_inference_statistics("iris", as_json=True)),
        before,
        "success",
        8,
    )
    stats = grpc_client.get_inference_statistics("iris", "1").model_stats[0]
    assert stats.name == "iris"
    # as_json gives uint64 as strings, as protobuf's JSON form does
    assert stats.inference_stats.success.count - int(count(before, "success")) == 8
    assert stats.inference_count - int(before["inference_count"]) == 16
    assert stats.inference_stats.compute_infer.ns > int(
        before["inference_stats"]["compute_infer"]["ns"]
    )


def test_all_models_and_unknown_ones(hub: Hub, grpc_client: tg.InferenceServerClient) -> None:
    everything = httpx.get(f"{hub.url}/v2/models/stats", timeout=10)
    assert everything.status_code == 200, everything.text
    names = {s["name"] for s in everything.json()["model_stats"]}
    assert {"iris", "digits", "breast_cancer"} <= names and "stats" not in names
    assert len(grpc_client.get_inference_statistics().model_stats) == len(
        everything.json()["model_stats"]
    )
    missing = httpx.get(f"{hub.url}/v2/models/nope/stats", timeout=10)
    assert missing.status_code == 404 and "does not exist" in missing.json()["error"]
    no_version = httpx.get(f"{hub.url}/v2/models/iris/versions/9/stats", timeout=10)
    assert no_version.status_code == 404 and "no version '9'" in no_version.json()["error"]
    with pytest.raises(InferenceServerException, match="does not exist"):
        grpc_client.get_inference_statistics("nope")
