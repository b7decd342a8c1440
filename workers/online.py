"""The arq job function of the online lane: one batch of requests, answered in one message.

The batch's requests run through the model's batcher together (with any other batch or job of
the model running here), so that they share onnxruntime calls: joined into one set of arrays
when their shapes allow. Each request succeeds or fails on its own; a request whose deadline
has passed is not run (nobody waits for it).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
from arq import Retry
from redis.exceptions import RedisError

from contract import channels
from contract.online import Answer, OnlineRequest, Reply
from contract.tensors import DTYPES, unpack_tensor, view_rows, view_tensor
from contract.wire import dumps
from workers.attempt import ENDED
from workers.batcher import Arrays, Batcher
from workers.heartbeat import count_job
from workers.repository import Model
from workers.runner import text_for_onnxruntime
from workers.stats import Timed, Timing, counted, publish_counted

log = logging.getLogger(__name__)


async def run_batch(
    ctx: dict[str, Any],
    *,
    model: str,
    version: str,
    reply: str,
    batch: str,
    requests: list[OnlineRequest],
) -> object:
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
        await channels.publish(ctx["redis"], reply, dumps(gone))
        return None
    stats["running"] += 1
    try:
        answers = await _run(served, batcher, requests)
    finally:
        stats["running"] -= 1
        stats["done"] += 1
    for answer in answers:
        count_job(stats, model, "failed" if "error" in answer else "succeeded")
    message: Reply = {"batch": batch, "answers": answers}
    try:
        # with this worker's statistics (workers/stats.py), then the job's end (ctx["end"],
        # workers/attempt.py) once the answer is out: one round trip
        await publish_counted(ctx["redis"], ctx["tally"], reply, dumps(message), ctx["end"])
    except RedisError as exc:
        # the answer is lost with the connection: run the batch again while deadlines allow
        log.warning("batch %s: redis unavailable (%s); it will run again", batch, exc)
        raise Retry(defer=0.1) from exc
    return ENDED


async def _run(model: Model, batcher: Batcher, requests: list[OnlineRequest]) -> list[Answer]:
    """Every request's answer, in order. The live requests' rows are joined into one run of the
    batcher when they can be (one call instead of a future and a task per request); when the
    joined run fails, each runs alone, so that a bad request fails only itself."""
    now = time.time()
    answers: dict[str, Answer] = {
        r["id"]: {"id": r["id"], "error": "the request's deadline passed", "status": 503}
        for r in requests
        if now > r["deadline"]
    }
    if answers:  # each a failure of no duration, for the statistics
        batcher.counts.answered(Timing(), False, len(answers))
    live = [r for r in requests if r["id"] not in answers]
    if len(live) == 1:  # alone: awaited here, no task of its own to hop to and back
        with batcher.expecting(), Timed() as timing:
            answer = await _answer(model, batcher, live[0], _inputs(live[0]))
        batcher.counts.answered(timing, _ok(answer))  # _answer raises nothing but a cancel
        answers[answer["id"]] = answer
        return [answers[r["id"]] for r in requests]
    joined = _joined(live) if batcher.batchable and len(live) > 1 else None
    if joined is not None:
        arrays, counts = joined
        try:
            with batcher.expecting(), Timed() as timing:
                async with asyncio.timeout(model.config.timeout_s):
                    results = await batcher.run_rows(arrays)
            assert results is not None  # only a progress callback stops early
        except Exception:
            joined = None  # find the culprit below
        else:
            # each request waited and ran as long as the joined run
            batcher.counts.answered(timing, True, len(live))
            answers.update(_split(batcher, live, counts, results))
    if joined is None:
        inputs = [_inputs(r) for r in live]
        # only the requests that unpacked will queue rows: the batcher waits for none other
        with batcher.expecting(sum(not isinstance(a, Exception) for a in inputs)):
            alone = await asyncio.gather(
                *(
                    counted(batcher.counts, _answer(model, batcher, r, a), _ok)
                    for r, a in zip(live, inputs, strict=True)
                )
            )
        answers.update((a["id"], a) for a in alone)
    return [answers[r["id"]] for r in requests]


def _inputs(request: OnlineRequest) -> Arrays | Exception:
    try:
        return {p["name"]: text_for_onnxruntime(unpack_tensor(p)) for p in request["inputs"]}
    except Exception as exc:
        return exc


def _ok(answer: Answer) -> bool:
    return "error" not in answer


def _joined(live: list[OnlineRequest]) -> tuple[Arrays, list[int]] | None:
    """The requests' inputs as one set of arrays, and each one's rows, if they pack the same
    names, in the same order, of the same datatype (not BYTES) and shape but for the rows, each
    with the bytes its shape needs; else None (each is then unpacked and run on its own). The
    packed bytes are joined, one copy, not unpacked per request and concatenated."""
    try:
        return _join(live)
    except (KeyError, TypeError, IndexError, ValueError):  # malformed: each fails on its own
        return None


def _join(live: list[OnlineRequest]) -> tuple[Arrays, list[int]] | None:
    spec = [(p["name"], p["datatype"], p["shape"][1:]) for p in live[0]["inputs"]]
    if not spec or any(d not in DTYPES or d == "BYTES" for _, d, _ in spec):
        return None
    row_bytes = [DTYPES[d].itemsize * math.prod(tail) for _, d, tail in spec]
    raws: list[list[bytes]] = [[] for _ in spec]
    counts: list[int] = []
    for request in live:
        packed = request["inputs"]
        if len(packed) != len(spec) or not packed[0]["shape"]:
            return None
        rows = packed[0]["shape"][0]
        for (name, datatype, tail), size, p, into in zip(
            spec, row_bytes, packed, raws, strict=True
        ):
            shape = p["shape"]
            if (
                p["name"] != name
                or p["datatype"] != datatype
                or shape[1:] != tail
                or shape[0] != rows
                or len(p["raw"]) != rows * size
            ):
                return None
            into.append(p["raw"])
        counts.append(rows)
    total = sum(counts)
    joined = {
        name: np.frombuffer(b"".join(into), DTYPES[datatype]).reshape(total, *tail)
        for (name, datatype, tail), into in zip(spec, raws, strict=True)
    }
    return joined, counts


def _split(
    batcher: Batcher, live: list[OnlineRequest], counts: list[int], results: Arrays
) -> Iterator[tuple[str, Answer]]:
    """Each request's answer from the joined run's outputs: its rows as views of the outputs'
    memory (``view_rows``), packed once per output, not copied per request; the reply is
    written at once, before the outputs go."""
    packed = {n: view_rows(n, results[n], counts) for n in batcher.output_names}
    for i, request in enumerate(live):
        names = request["outputs"] or batcher.output_names
        yield request["id"], {"id": request["id"], "outputs": [packed[n][i] for n in names]}


def _outputs(batcher: Batcher, request: OnlineRequest, results: Arrays) -> Answer:
    names = request["outputs"] or batcher.output_names
    return {"id": request["id"], "outputs": [view_tensor(n, results[n]) for n in names]}


async def _answer(
    model: Model, batcher: Batcher, request: OnlineRequest, inputs: Arrays | Exception
) -> Answer:
    try:
        if isinstance(inputs, Exception):
            raise inputs
        results = batcher.run_now(inputs)  # a lone row of a tiny model: no timer to set
        if results is None:
            async with asyncio.timeout(model.config.timeout_s):
                results = await batcher.run_rows(inputs)
        assert results is not None  # only a progress callback stops early
    except TimeoutError:
        error = f"timed out after {model.config.timeout_s:g} s"
        return {"id": request["id"], "error": error, "status": 503}
    except Exception as exc:
        return {"id": request["id"], "error": f"{type(exc).__name__}: {exc}"}
    return _outputs(batcher, request, results)
