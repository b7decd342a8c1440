"""Small helpers shared by the tests: polling with a deadline, model builders, Redis and
metrics looks."""

from __future__ import annotations

import asyncio
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis
from starlette.exceptions import StarletteDeprecationWarning

from contract import keys
from contract.events import Event

ROOT = Path(__file__).resolve().parent.parent
OPSET = 17
IR_VERSION = 8

T = TypeVar("T")


def wait_for(
    condition: Callable[[], T], *, timeout: float = 20.0, every: float = 0.02, what: str = ""
) -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(every)


async def until(condition: Callable[[], object], *, limit_s: float = 10.0, what: str = "") -> None:
    """``wait_for`` inside an event loop: check ``condition`` after each turn of the loop."""
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit_s} s waiting for {what or condition}")
        await asyncio.sleep(0)  # one turn: the other tasks run, then the condition again


def wait_job(client: Any, job_id: str, statuses: set[str], timeout: float = 30.0) -> dict:
    """GET the job until its status is one of ``statuses``; return the job."""

    def reached() -> dict | None:
        r = client.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        job = r.json()
        return job if job["status"] in statuses else None

    return wait_for(reached, timeout=timeout, what=f"job {job_id} to reach {statuses}")


def job_events(redis: Redis, job_id: str) -> list[Event]:
    """The job's event stream, read straight from Redis."""
    rows = redis.xrange(keys.job_events(job_id))
    return [Event.from_wire(eid.decode(), body[b"e"]) for eid, body in rows]


def stream_id(event_id: str) -> tuple[int, int]:
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq)


def wait_idle(redis: Redis, timeout: float = 30.0) -> None:
    """Wait until no arq job is running or waiting in the default pool's queue, in the
    database of ``redis`` (the module's own: other modules' jobs are not there)."""

    def idle() -> bool:
        busy = redis.zcard(keys.queue("default")) or redis.keys(
            keys.in_progress_prefix("default") + "*"
        )
        return not busy

    wait_for(idle, timeout=timeout, what="the default pool to be idle")


Samples = dict[str, list[tuple[dict[str, str], float]]]
"""Prometheus samples by name: each with its labels and value."""


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return samples


def scrape(url: str) -> Samples:
    """The metrics of the hub at ``url``."""
    return parse(httpx.get(f"{url}/metrics", timeout=10).text)


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(
        v for tags, v in samples.get(name, ()) if all(tags.get(k) == x for k, x in labels.items())
    )


with warnings.catch_warnings():
    # starlette 1.x prefers httpx2 for its TestClient; httpx (a hub dependency) still works
    warnings.filterwarnings(
        "ignore",
        message="Using `httpx` with `starlette.testclient` is deprecated",
        category=StarletteDeprecationWarning,
    )
    from starlette.testclient import TestClient as TestClient  # re-exported


# --- models built with the onnx helper API ---------------------------------------------------


def _save(model: onnx.ModelProto, folder: Path, config: str) -> Path:
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    (folder / "1").mkdir(parents=True)
    onnx.save(model, folder / "1" / "model.onnx")
    (folder / "config.toml").write_text(config)
    return folder / "1" / "model.onnx"


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def build_slow(folder: Path, width: int = 1024, layers: int = 4) -> Path:
    """x FP32 [-1, 16] -> MatMul 16xW -> layers x (MatMul WxW + Relu) -> y FP32 [-1, W]."""
    rng = np.random.default_rng(1234)
    weights = [rng.standard_normal((16, width)).astype(np.float32) * np.float32(0.25)]
    scale = np.float32(np.sqrt(2.0 / width))
    weights += [
        rng.standard_normal((width, width)).astype(np.float32) * scale for _ in range(layers)
    ]
    inits = [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(weights)]
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["h0"])]
    for i in range(1, layers + 1):
        nodes.append(helper.make_node("MatMul", [f"h{i - 1}", f"w{i}"], [f"m{i}"]))
        out = "y" if i == layers else f"h{i}"
        nodes.append(helper.make_node("Relu", [f"m{i}"], [out]))
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])],
        initializer=inits,
    )
    config = (
        'description = "A deliberately heavy MLP for bulk, progress and cancel tests"\n'
        "max_batch_size = 2\n"
        "timeout_s = 60\n"
    )
    return _save(_model(graph), folder, config)


def build_failing(folder: Path) -> Path:
    """x FP32 [-1, 4] reshaped to a fixed [1, 4]: one row works, two rows fail at run time."""
    shape = numpy_helper.from_array(np.array([1, 4], dtype=np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "failing",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        initializer=[shape],
    )
    return _save(_model(graph), folder, 'description = "Fails for more than one row"\n')


def build_pair(folder: Path, pool: str = "default") -> Path:
    """Two inputs a, b FP32 [-1, 2] -> sum = a + b: for requests with several inputs."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["sum"])],
        "pair",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 2]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 2]),
        ],
        [helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["N", 2])],
    )
    return _save(_model(graph), folder, f'pool = "{pool}"\n')
