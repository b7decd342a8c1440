"""The arq job function of the online lane: one batch of requests, answered in one message.

The batch's requests run through the model's batcher together (with any other batch or job of
the model running here), so that they share onnxruntime calls. Each request succeeds or fails
on its own; a request whose deadline has passed is not run (nobody waits for it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from arq import Retry
from redis.exceptions import RedisError

from contract.online import Answer, OnlineRequest, Reply
from contract.tensors import pack_tensor, unpack_tensor
from contract.wire import dumps
from workers.batcher import Batcher
from workers.heartbeat import count_job
from workers.repository import Model
from workers.runner import text_for_onnxruntime
from workers.stats import counted, publish_counted

log = logging.getLogger(__name__)


async def run_batch(
    ctx: dict[str, Any],
    *,
    model: str,
    version: str,
    reply: str,
    batch: str,
    requests: list[OnlineRequest],
) -> None:
    stats: dict[str, Any] = ctx["stats"]
    try:
        served: Model = ctx["models"][model]
        batcher: Batcher = ctx["batchers"][model, version]
    except KeyError:  # unloaded since the hub sent it (workers/serving.py)
        error = f"model '{model}' version {version} is not served any more (unloaded)"
        gone: Reply = {
            "batch": batch,
            "answers": [{"id": r["id"], "error": error, "status": 503} for r in requests],
        }
        await ctx["redis"].publish(reply, dumps(gone))
        return
    stats["running"] += 1
    try:
        with batcher.expecting(len(requests)):
            answers = await asyncio.gather(
                *(counted(batcher.counts, _answer(served, batcher, r), _ok) for r in requests)
            )
    finally:
        stats["running"] -= 1
        stats["done"] += 1
    for answer in answers:
        count_job(stats, model, "failed" if "error" in answer else "succeeded")
    message: Reply = {"batch": batch, "answers": list(answers)}
    try:
        # with this worker's statistics (workers/stats.py): one round trip still
        await publish_counted(ctx["redis"], ctx["tally"], reply, dumps(message))
    except RedisError as exc:
        # the answer is lost with the connection: run the batch again while deadlines allow
        log.warning("batch %s: redis unavailable (%s); it will run again", batch, exc)
        raise Retry(defer=0.1) from exc


def _ok(answer: Answer) -> bool:
    return "error" not in answer


async def _answer(model: Model, batcher: Batcher, request: OnlineRequest) -> Answer:
    if time.time() > request["deadline"]:
        return {"id": request["id"], "error": "the request's deadline passed", "status": 503}
    try:
        async with asyncio.timeout(model.config.timeout_s):
            outputs = await _predict(batcher, request)
    except TimeoutError:
        error = f"timed out after {model.config.timeout_s:g} s"
        return {"id": request["id"], "error": error, "status": 503}
    except Exception as exc:
        return {"id": request["id"], "error": f"{type(exc).__name__}: {exc}"}
    return {"id": request["id"], "outputs": outputs}


async def _predict(batcher: Batcher, request: OnlineRequest) -> list[dict[str, Any]]:
    arrays = {p["name"]: text_for_onnxruntime(unpack_tensor(p)) for p in request["inputs"]}
    results = await batcher.run_rows(arrays)
    assert results is not None  # only a progress callback stops early
    return [pack_tensor(n, results[n]) for n in request["outputs"] or batcher.output_names]
