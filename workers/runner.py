"""The arq job functions: one job, from its packed inputs to its final event (``run_job``),
and the jobs the hub created together (``run_jobs``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from arq import Retry
from redis.exceptions import RedisError

from contract import inputs as inputs_store
from contract import keys, tracing
from contract import outputs as outputs_store
from contract.events import EventType, JobStatus
from contract.jobstore import JobStore, Step
from contract.logs import bound, job_line
from contract.tensors import unpack_tensor, view_tensor
from workers.batcher import Batcher
from workers.heartbeat import count_job
from workers.repository import Model
from workers.stats import counted
from workers.tracing import traced_job

log = logging.getLogger(__name__)

_RUNNABLE = (JobStatus.QUEUED, JobStatus.STARTED)  # started: a re-run after a worker died

ANNOUNCE_AFTER_S = 0.05


async def run_job(ctx: dict[str, Any], **job: Any) -> None:
    """Run one job; if Redis is away, leave it to arq to run again rather than lose it."""
    try:
        with bound(request_id=job.get("request_id"), job_id=ctx["job_id"]):
            await _run(ctx, **job)
            if inputs_store.has_apart(job["inputs"]):  # ended: they are not read again
                await ctx["store"].redis.delete(keys.job_inputs(ctx["job_id"]))
    except RedisError as exc:
        # the record still says queued or started, and the guarded events will not repeat
        log.warning("job %s: redis unavailable (%s); it will run again", ctx["job_id"], exc)
        raise Retry(defer=1) from exc


async def run_jobs(ctx: dict[str, Any], *, jobs: list[dict[str, Any]]) -> None:
    """Run the jobs created together, each as ``run_job`` runs it, at once: their rows meet in
    the model's batcher and their ends in one transition call (the job store gathers them).
    If Redis failed one, they all run again: the steps of those that ended do not repeat."""
    run = traced_job(run_job)
    outcomes = await asyncio.gather(
        *(
            run({**ctx, "job_id": job["job_id"]}, **{k: v for k, v in job.items() if k != "job_id"})
            for job in jobs
        ),
        return_exceptions=True,
    )
    failures = [o for o in outcomes if isinstance(o, BaseException)]
    if failures:  # a Retry first: it hands the jobs back to the queue
        raise next((f for f in failures if isinstance(f, Retry)), failures[0])


async def _run(
    ctx: dict[str, Any],
    *,
    model: str,
    version: str,
    owner: str,
    inputs: list[dict[str, Any]],
    outputs: list[str] | None = None,
    request_id: str | None = None,  # the submitting request's, in every log line of the job
    stream_outputs: bool = False,
    traceparent: str | None = None,  # the request's trace: workers/tracing.py reads it
) -> None:
    store: JobStore = ctx["store"]
    job_id: str = ctx["job_id"]
    attempt: int = ctx["job_try"]
    stats: dict[str, Any] = ctx["stats"]
    started = Step(
        EventType.STARTED,
        _RUNNABLE,
        status=JobStatus.STARTED,
        data={"attempt": attempt, "worker": ctx["worker_id"]},
        guard=("attempt", attempt),
    )
    try:
        served = ctx["models"][model]
        batcher = ctx["batchers"][model, version]
    except KeyError:  # unloaded while the job was queued (workers/serving.py)
        error = f"model '{model}' version {version} is not served any more (unloaded)"
        failed = Step(EventType.FAILED, (JobStatus.STARTED,), JobStatus.FAILED, {"error": error})
        await store.transition(job_id, started, failed, model=model, owner=owner)
        return

    def log_started() -> None:
        job_line("job started", event="started", model=model, attempt=attempt)

    async def emit(step: Step, *more: Step) -> tuple[bool, bool]:
        """Apply the steps in one round trip: whether the first was, and whether a cancel
        is asked."""
        results = await store.transition(job_id, step, *more, model=model, owner=owner)
        return results[0][0], any(cancel for _, _, cancel in results)

    streamed: list[tuple[int, int]] = []  # the chunks stored as they came, when streaming
    limit = store.limits.inline_output_bytes

    def chunk_step(start: int, end: int, chunk: dict[str, Any]) -> Step:
        names = outputs or batcher.output_names
        packed = [view_tensor(n, chunk[n]) for n in names]
        blob = outputs_store.stored(packed)
        streamed.append((start, end))
        return Step(
            EventType.OUTPUT,
            (JobStatus.STARTED,),
            data=outputs_store.chunk_event_data(job_id, (start, end), packed, blob, limit),
            guard=("streamed", end),
            outputs=blob,
            outputs_key=keys.job_outputs_chunk(job_id, start),
        )

    # A quick job of one chunk says "started" together with its result, in one round trip;
    # a bulk job, or one still running after ANNOUNCE_AFTER_S, says it first.
    announced = False
    if _rows(inputs) > batcher.max_batch_size:
        if not (await emit(started))[0]:
            return  # canceled while queued, or already ended by an earlier attempt
        announced = True
        log_started()

    stats["running"] += 1
    chunks = chunk_step if stream_outputs else None

    def resolve() -> Awaitable[list[dict[str, Any]]]:  # large inputs are read in the work
        return inputs_store.resolve(store.redis, job_id, inputs)

    # one still running after ANNOUNCE_AFTER_S says "started" from a task of its own, while
    # it runs here (a timer, not a task and a wait for each job: most end before it fires)
    announcing: list[asyncio.Future[tuple[bool, bool]]] = []
    timer = None
    if not announced:
        timer = asyncio.get_running_loop().call_later(
            ANNOUNCE_AFTER_S, lambda: announcing.append(asyncio.ensure_future(emit(started)))
        )
    try:
        try:
            status, data = await counted(
                batcher.counts, _predict(served, batcher, resolve, outputs, emit, chunks), _ok
            )
        except RedisError:
            raise
        except TimeoutError:
            status = JobStatus.FAILED
            data = {"error": f"timed out after {served.config.timeout_s:g} s"}
        except Exception as exc:
            log.exception("job %s failed", job_id)
            status, data = JobStatus.FAILED, {"error": f"{type(exc).__name__}: {exc}"}
    except BaseException:  # Redis away, or stopping: the announcement goes with the attempt
        for announcement in announcing:
            announcement.cancel()
        raise
    finally:
        if timer is not None:
            timer.cancel()
        stats["running"] -= 1
        stats["done"] += 1
    if announcing:
        if not (await announcing[0])[0]:
            # canceled while queued, or already ended by an earlier attempt: its one chunk
            # ran for nothing (as a quick job's does), and nothing is recorded
            return
        announced = True
        log_started()

    blob = b""
    if status is JobStatus.SUCCEEDED:  # small: in the event and the record; else stored apart
        packed = data["outputs"]
        blob = outputs_store.stored(packed)
        data = outputs_store.event_data(job_id, packed, blob, limit, served.config.labels)
        if streamed:  # the chunks hold the outputs already: the key lists them
            blob = outputs_store.chunk_list(streamed)
        elif "outputs" in data:  # the record holds them: no key of their own
            blob = b""
    ended = Step(EventType(status.value), (JobStatus.STARTED,), status, data, outputs=blob)
    steps = (ended,) if announced else (started, ended)
    with tracing.span(f"{status.value} event", attributes={"inferhub.job_id": job_id}):
        results = await store.transition(job_id, *steps, model=model, owner=owner)
    if not results[0][0]:
        return  # canceled while queued: it ran for nothing, and nothing is recorded
    if not announced:
        log_started()
    count_job(stats, model, status.value)  # the worker's figures, sent with its heartbeat
    stats.setdefault("batchers", ctx["batchers"])
    detail = {"error": data["error"]} if "error" in data else {}
    job_line(f"job {status.value}", event=status.value, model=model, **detail)


def _ok(result: tuple[JobStatus, dict[str, Any]]) -> bool | None:
    """A job's verdict for the statistics: a canceled one is neither a success nor a failure."""
    return None if result[0] is JobStatus.CANCELED else result[0] is JobStatus.SUCCEEDED


def _rows(packed: list[dict[str, Any]]) -> int:
    shape = packed[0]["shape"]
    return int(shape[0]) if shape else 1


async def _predict(
    model: Model,
    batcher: Batcher,
    resolve: Callable[[], Awaitable[list[dict[str, Any]]]],
    wanted: list[str] | None,
    emit: Any,
    chunk_step: Callable[[int, int, dict[str, Any]], Step] | None = None,
) -> tuple[JobStatus, dict[str, Any]]:
    """Run the rows in chunks of ``max_batch_size``, reporting progress (and, with
    ``chunk_step``, each chunk's outputs) and honouring cancel."""
    packed = await resolve()
    arrays = {p["name"]: text_for_onnxruntime(unpack_tensor(p)) for p in packed}
    stopped_at, canceled = 0, False
    pending: asyncio.Future[None] | None = None  # the last chunk's events, on their way

    async def report(
        done: int, steps: tuple[Step, ...], after: asyncio.Future[None] | None
    ) -> None:
        nonlocal stopped_at, canceled
        if after is not None:
            await after  # in order
        _, cancel = await emit(*steps)
        stopped_at, canceled = done, canceled or cancel

    async def progress(done: int, total: int, chunk: dict[str, Any]) -> bool:
        nonlocal pending
        step = Step(
            EventType.PROGRESS,
            (JobStatus.STARTED,),
            data={"done": done, "total": total},
            guard=("done", done),
        )
        rows = len(next(iter(chunk.values())))
        more = (chunk_step(done - rows, done, chunk),) if chunk_step else ()
        # sent while the next chunk runs rather than before it starts; a cancel that an
        # earlier chunk's answer brought stops the job here
        pending = asyncio.ensure_future(report(done, (step, *more), pending))
        return not canceled

    try:
        async with asyncio.timeout(model.config.timeout_s):
            with (
                batcher.expecting(),
                tracing.span("predict", attributes={"inferhub.rows": _rows(packed)}),
            ):
                results = await batcher.run_rows(arrays, progress)
            if pending is not None:
                await pending  # every chunk's events before the job's last one
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
    if results is None:
        return JobStatus.CANCELED, {"reason": "canceled by client", "done": stopped_at}
    names = wanted or batcher.output_names
    return JobStatus.SUCCEEDED, {"outputs": [view_tensor(n, results[n]) for n in names]}


def text_for_onnxruntime(array: np.ndarray) -> np.ndarray:
    """BYTES elements as str: onnxruntime str()s any other object, so b"abc" became "b'abc'".

    Its string tensors are UTF-8 text; an element that is not fails the job with the reason.
    """
    if array.dtype != object:
        return array
    text = np.empty(array.shape, dtype=object)
    text.flat[:] = [x.decode() if isinstance(x, bytes) else x for x in array.flat]
    return text
