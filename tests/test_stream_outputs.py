"""Outputs streamed in chunks (``"stream_outputs": true``): an ``output`` event per chunk with
its rows and, when small, its outputs, else their URL; resumable by event id; each chunk stored
once, and the job's outputs read back from its chunks. The module's stack serves the example
digits and a heavy model in chunks of 64 rows.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
import pytest
from helpers import ROOT, TestClient, build_slow, wait_for
from redis import Redis
from sklearn.datasets import load_digits
from stack import Stack

from contract import keys
from hub.app import create_app

SLOW = 'description = "heavy rows, chunks of 64"\nmax_batch_size = 64\ntimeout_s = 60\n'


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The module's models: digits, and slow in chunks of 64 rows."""
    root = tmp_path_factory.mktemp("streamed") / "models"
    shutil.copytree(ROOT / "models" / "digits", root / "digits")
    build_slow(root / "slow")
    (root / "slow" / "config.toml").write_text(SLOW)
    return root


@pytest.fixture(scope="module")
def served(stack: Stack, root: Path) -> Iterator[tuple[TestClient, Redis]]:
    stack.worker("streaming", models=root)
    with TestClient(create_app(stack.settings.model_copy(update={"models": root}))) as client:
        wait_for(lambda: client.get("/readyz").status_code == 200, what="/readyz")
        yield client, stack.redis


def events(client: TestClient, job_id: str, after: str | None = None) -> list[dict[str, Any]]:
    headers = {"Last-Event-ID": after} if after else {}
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as stream:
        text = "".join(stream.iter_text())
    return [orjson.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]


def run(client: TestClient, model: str, rows: np.ndarray) -> str:
    body = {"model": model, "data": rows.tolist(), "stream_outputs": True}
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def onnxruntime(
    model: str, feed: dict[str, np.ndarray], repo: Path = ROOT / "models"
) -> list[np.ndarray]:
    path = repo / model / "1" / "model.onnx"
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)


def tensors(outputs: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    return {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in outputs}


def test_small_chunks_ride_in_their_events(served: tuple[TestClient, Redis]) -> None:
    client, redis = served
    rows = load_digits().data[:1000].astype(np.float32)  # 4 chunks of max_batch_size 256
    job_id = run(client, "digits", rows)
    seen = events(client, job_id)
    chunks = [e for e in seen if e["type"] == "output"]
    assert [c["data"]["rows"] for c in chunks] == [[0, 256], [256, 512], [512, 768], [768, 1000]]
    types = [e["type"] for e in seen]
    assert types[-1] == "succeeded" and types.index("output") < types.index("succeeded")
    # each chunk comes right beside the progress that says it is done
    assert all(types[types.index("output") + 2 * i - 1] == "progress" for i in range(4))
    label, probabilities = onnxruntime("digits", {"input": rows})
    got = [tensors(c["data"]["outputs"]) for c in chunks]
    assert np.array_equal(np.concatenate([g["label"] for g in got]), label)
    joined = np.concatenate([g["probabilities"] for g in got]).astype(np.float32)
    assert np.array_equal(joined, probabilities)
    # stored once: the job's outputs key lists the chunks, which hold the tensors
    assert redis.memory_usage(keys.job_outputs(job_id)) < 1024
    assert all(redis.exists(keys.job_outputs_chunk(job_id, start)) for start in (0, 256, 512, 768))
    whole = client.get(f"/v1/jobs/{job_id}/outputs").json()["outputs"]
    assert np.array_equal(tensors(whole)["label"], label)
    with np.load(io.BytesIO(client.get(f"/v1/jobs/{job_id}/outputs?format=npz").content)) as z:
        assert np.array_equal(z["probabilities"], probabilities)


def test_large_chunks_are_urls_and_resume_by_id(
    served: tuple[TestClient, Redis],
) -> None:
    client, _ = served
    rows = np.random.default_rng(3).standard_normal((200, 16)).astype(np.float32)
    job_id = run(client, "slow", rows)  # chunks of 64 rows x 1024 floats: 256 KiB each
    seen = events(client, job_id)
    chunks = [e for e in seen if e["type"] == "output"]
    assert [c["data"]["rows"] for c in chunks] == [[0, 64], [64, 128], [128, 192], [192, 200]]
    # three of 256 KiB come as URLs; the last, 8 rows (32 KiB), rides in its event
    assert ["outputs" in c["data"] for c in chunks] == [False, False, False, True]
    got = []
    for chunk in chunks[:3]:
        url = chunk["data"]["outputs_url"]
        assert (
            url
            == f"/v1/jobs/{job_id}/outputs?rows={chunk['data']['rows'][0]}:{chunk['data']['rows'][1]}"
        )
        got.append(np.load(io.BytesIO(client.get(url + "&format=npy").content)))
    got.append(tensors(chunks[3]["data"]["outputs"])["y"])
    assert np.concatenate(got).shape == (200, 1024)
    whole = np.load(io.BytesIO(client.get(f"/v1/jobs/{job_id}/outputs?format=npy").content))
    assert np.array_equal(np.concatenate(got).astype(np.float32), whole)
    # resume after the second chunk: the rest come again, in order, and nothing before
    rest = events(client, job_id, after=chunks[1]["id"])
    assert [e["data"]["rows"] for e in rest if e["type"] == "output"] == [[128, 192], [192, 200]]
    assert rest[-1]["type"] == "succeeded"


def test_rows_of_outputs_that_were_not_streamed(
    served: tuple[TestClient, Redis],
) -> None:
    client, _ = served
    rows = load_digits().data[:10].astype(np.float32)
    r = client.post(
        "/v1/jobs", json={"model": "digits", "data": rows.tolist()}, headers={"Prefer": "wait=30"}
    )
    job = r.json()
    part = client.get(f"/v1/jobs/{job['id']}/outputs", params={"rows": "2:5"}).json()
    label, _ = onnxruntime("digits", {"input": rows})
    assert tensors(part["outputs"])["label"].tolist() == label[2:5].tolist()
    bad = client.get(f"/v1/jobs/{job['id']}/outputs", params={"rows": "5:2"})
    assert bad.status_code == 422 and "past the start" in bad.json()["error"]["message"]


def test_the_cli_writes_each_streamed_chunk_into_its_npz(
    served: tuple[TestClient, Redis], stack: Stack, root: Path, tmp_path: Path
) -> None:
    """``inferhub submit --follow --out`` asks for the chunks and writes each into the file as
    it comes (three by their URL, the last from its event): the file holds the whole outputs."""
    client, _ = served
    hub = stack.hub("cli")
    rows = np.random.default_rng(5).standard_normal((200, 16)).astype(np.float32)
    given = tmp_path / "rows.json"
    given.write_bytes(orjson.dumps(rows.tolist()))
    out = tmp_path / "outputs.npz"
    command = ["submit", "slow", "--input", str(given), "--follow", "--out", str(out), "--json"]
    done = subprocess.run(
        [sys.executable, "-m", "cli", *command, "--url", hub.url],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    job = orjson.loads(done.stdout)
    chunks = [e["data"] for e in events(client, job["id"]) if e["type"] == "output"]
    assert ["outputs" in c for c in chunks] == [False, False, False, True]
    whole = np.load(io.BytesIO(client.get(f"/v1/jobs/{job['id']}/outputs?format=npy").content))
    (y,) = onnxruntime("slow", {"x": rows}, root)
    with np.load(out) as archive:
        assert archive.files == ["y"]
        assert np.array_equal(archive["y"], whole)
        assert np.allclose(archive["y"], y, rtol=1e-5, atol=1e-5)
