"""The batcher, on a real onnxruntime session: concurrent jobs share one call and each gets its
own rows back, bit for bit as if run alone; a failing request fails only itself; a canceled one
leaves the others; a batch is flushed at its preferred size, or after its delay, or at once
when no running job's rows are still to come (an online request that cannot be unpacked
brings none).

And the push wake-up, against a real worker: with arq's poll set to 10 s, a queued job still
starts at once.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from helpers import ROOT, TestClient, until, wait_for
from stack import Stack, Worker

from contract.online import Answer, OnlineRequest
from contract.tensors import pack_tensor, unpack_tensor
from workers import online
from workers.batcher import Batcher
from workers.repository import load_repository

DIGITS = ROOT / "models" / "digits" / "1" / "model.onnx"


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    return ort.InferenceSession(str(DIGITS), providers=["CPUExecutionProvider"])


def rows(n: int, seed: int) -> dict[str, np.ndarray]:
    return {"input": np.random.default_rng(seed).uniform(0, 16, (n, 64)).astype(np.float32)}


def alone(session: ort.InferenceSession, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    return session.run(None, feed)


def batcher(session: ort.InferenceSession, **options: float) -> Batcher:
    settings = {"max_batch_size": 64, "preferred_batch_size": 32, "max_queue_delay_ms": 20.0}
    return Batcher(session, **{**settings, **options})  # type: ignore[arg-type]


def waiting(task: asyncio.Task[object]) -> bool:
    """Whether the task has started and now waits (``Batcher.run`` on its result)."""
    return inspect.getcoroutinestate(task.get_coro()) == inspect.CORO_SUSPENDED  # type: ignore[arg-type]


async def job(b: Batcher, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    with b.expecting():
        return await b.run(feed)


def test_concurrent_jobs_share_calls_and_get_their_own_rows(session: ort.InferenceSession) -> None:
    feeds = [rows(1 + i % 5, seed=i) for i in range(24)]

    async def run() -> tuple[list[dict[str, np.ndarray]], int]:
        b = batcher(session)
        results = await asyncio.gather(*(job(b, f) for f in feeds))
        await b.close()
        return results, b.batches

    results, calls = asyncio.run(run())
    assert calls < len(feeds)  # they were batched
    for feed, got in zip(feeds, results, strict=True):
        label, probabilities = alone(session, feed)
        assert np.array_equal(got["label"], label)
        assert np.array_equal(got["probabilities"], probabilities)  # bit for bit


def test_a_failing_request_fails_only_itself(session: ort.InferenceSession) -> None:
    good = [rows(2, seed=i) for i in range(3)]
    bad = {"input": np.zeros((1, 63), np.float32)}  # the wrong width: onnxruntime refuses it

    async def run() -> list[object]:
        b = batcher(session, preferred_batch_size=4)
        out = await asyncio.gather(*(job(b, f) for f in [*good, bad]), return_exceptions=True)
        await b.close()
        return out

    *ok, failed = asyncio.run(run())
    assert isinstance(failed, Exception)
    for feed, got in zip(good, ok, strict=True):
        assert isinstance(got, dict)
        assert np.array_equal(got["label"], alone(session, feed)[0])


def test_a_canceled_job_leaves_the_others(session: ort.InferenceSession) -> None:
    feeds = [rows(1, seed=i) for i in range(5)]

    async def run() -> list[object]:
        # five jobs and a 60 s delay: the batch waits for the fifth job's rows, and one of the
        # first four is canceled meanwhile
        b = batcher(session, preferred_batch_size=64, max_queue_delay_ms=60_000)
        with b.expecting():  # the fifth job, whose rows come last
            tasks = [asyncio.create_task(job(b, f)) for f in feeds[:4]]
            # a job's rows are queued before it first waits (on its result)
            await until(lambda: all(waiting(t) for t in tasks), what="four jobs queued")
            tasks[1].cancel()
            tasks.append(asyncio.create_task(b.run(feeds[4])))  # the last rows: the batch runs
            out = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
        await b.close()
        assert b.batches == 1  # the canceled job's rows were left out of the one call
        return out

    out = asyncio.run(run())
    assert isinstance(out[1], asyncio.CancelledError)
    for i in (0, 2, 3, 4):
        assert np.array_equal(out[i]["label"], alone(session, feeds[i])[0])  # type: ignore[index]


def test_a_batch_does_not_wait_for_a_job_whose_rows_were_answered(
    session: ort.InferenceSession,
) -> None:
    first, second = rows(2, seed=1), rows(1, seed=2)

    async def run() -> tuple[list[dict[str, np.ndarray]], int]:
        # batches of at most 2 rows and a 60 s delay: the first job's rows run alone, then the
        # second's gather. The first job is still running (its answer not yet taken up), but
        # its rows are in: nothing is coming, so the second batch goes at once. (It waited for
        # the delay, or for another request, while the first job had not ended.)
        b = batcher(session, max_batch_size=2, preferred_batch_size=64, max_queue_delay_ms=60_000)
        jobs = asyncio.gather(job(b, first), job(b, second))
        results = await asyncio.wait_for(jobs, 10)
        await b.close()
        return results, b.batches

    results, calls = asyncio.run(run())
    assert calls == 2
    for feed, got in zip((first, second), results, strict=True):
        assert np.array_equal(got["probabilities"], alone(session, feed)[1])


def test_a_batch_is_flushed_at_its_preferred_size(session: ort.InferenceSession) -> None:
    async def run() -> int:
        # a 60 s delay and more jobs expected: only reaching 4 rows can flush it
        b = batcher(session, preferred_batch_size=4, max_queue_delay_ms=60_000)
        with b.expecting(), b.expecting(), b.expecting():
            await asyncio.wait_for(asyncio.gather(b.run(rows(2, 1)), b.run(rows(2, 2))), timeout=10)
        await b.close()
        return b.batches

    assert asyncio.run(run()) == 1


def test_a_batch_is_flushed_after_its_delay(session: ort.InferenceSession) -> None:
    async def run() -> int:
        # more jobs expected than come, and far below the preferred size: the delay flushes it
        b = batcher(session, preferred_batch_size=64, max_queue_delay_ms=50)
        with b.expecting(), b.expecting(), b.expecting(), b.expecting():
            await asyncio.wait_for(asyncio.gather(b.run(rows(1, 1)), b.run(rows(1, 2))), timeout=10)
        await b.close()
        return b.batches

    assert asyncio.run(run()) == 1


# --- push wake-up ----------------------------------------------------------------------------


@pytest.fixture
def slow_polling_worker(transient: Stack, tmp_path: Path) -> Worker:
    repo = tmp_path / "models"
    (repo / "wakeful" / "1").mkdir(parents=True)
    (repo / "wakeful" / "1" / "model.onnx").write_bytes(
        (ROOT / "models" / "iris" / "1" / "model.onnx").read_bytes()
    )
    (repo / "wakeful" / "config.toml").write_text('pool = "wakeful"\n')
    return transient.worker(models=repo, pool="wakeful", poll_delay_s=10.0)


def test_a_queued_job_wakes_a_worker_that_polls_every_10_s(
    client: TestClient, slow_polling_worker: Worker
) -> None:
    wait_for(lambda: client.get("/v1/models/wakeful").json().get("ready"), what="wakeful ready")
    body = {"model": "wakeful", "data": [[5.1, 3.5, 1.4, 0.2]]}
    # the first job may be found by the worker's first poll; the second only by the wake-up
    for _ in range(2):
        r = client.post("/v1/jobs", json=body, headers={"Prefer": "wait=5"})
        assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text


def test_a_batch_whose_request_cannot_be_unpacked_does_not_wait_for_its_rows(
    session: ort.InferenceSession,
) -> None:
    """workers/online.py runs the requests of a batch that cannot be joined each on its own,
    through the batcher; one whose inputs do not unpack fails at once and queues no rows, so
    the others' call does not wait the model's delay for them (60 s here)."""
    model = load_repository(ROOT / "models").models["digits"]
    good = [rows(1, seed=1), rows(2, seed=2)]
    requests: list[OnlineRequest] = [
        {
            "id": str(i),
            "inputs": [pack_tensor("input", f["input"])],
            "outputs": None,
            "deadline": time.time() + 60,
        }
        for i, f in enumerate(good)
    ]
    broken = pack_tensor("input", rows(1, seed=3)["input"])
    broken["raw"] = bytes(broken["raw"])[:-4]  # a value short: the batch is not joined
    requests.append({"id": "2", "inputs": [broken], "outputs": None, "deadline": time.time() + 60})

    async def run() -> list[Answer]:
        b = batcher(session, preferred_batch_size=64, max_queue_delay_ms=60_000)
        answers = await asyncio.wait_for(online._run(model, b, requests), 10)
        await b.close()
        return answers

    first, second, failed = asyncio.run(run())
    assert "error" in failed
    for feed, answer in zip(good, (first, second), strict=True):
        (probabilities,) = [o for o in answer["outputs"] if o["name"] == "probabilities"]
        assert np.array_equal(unpack_tensor(probabilities), alone(session, feed)[1])
