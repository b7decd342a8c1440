"""``ModelStreamInfer``: every request of a bidirectional stream answered, concurrently.

A request of at most the model's ``max_batch_size`` rows runs on the online lane and gets one
response, as ``ModelInfer``. A larger one, a bulk request, runs as a durable job (the jobs
lane, visible in ``/v1/jobs``) and is answered as Triton answers a decoupled model: a response
as soon as the job is queued, one per progress event, then the outputs, each with parameters
``job_id``, ``done``, ``total`` and ``triton_final_response`` (true on the last). A request
that fails is answered with ``error_message`` (and its id) and the stream goes on.

Bounds: at most ``MAX_IN_FLIGHT`` requests of a stream run at once (reading waits); answers
wait in a queue of ``MAX_QUEUED_ANSWERS``, past which progress responses are dropped (the next
one says as much) while outputs and errors wait for room. A client that leaves cancels what its
stream still runs; a bulk job goes on, and stays at ``/v1/jobs/{job_id}``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING, Any

from contract.errors import InferenceFailed, Unavailable
from contract.events import EventType, JobStatus
from hub.auth import Principal
from hub.grpc import convert
from hub.grpc.errors import as_error
from hub.grpc.proto import grpc_service_pb2 as pb
from hub.offload import OFF_LOOP_BYTES, decode_body
from hub.v2 import config
from hub.v2.routes import hub_priority

if TYPE_CHECKING:
    from hub.grpc.service import InferenceService

MAX_IN_FLIGHT = 64
MAX_QUEUED_ANSWERS = 256

_END = None  # the reader's last word: every request was answered


class StreamAnswers:
    """The answers of one stream, in the order they are ready."""

    def __init__(self, servicer: InferenceService, caller: Principal) -> None:
        self.servicer = servicer
        self.service = servicer.service
        self.caller = caller
        self.answers: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue(
            MAX_QUEUED_ANSWERS
        )
        self.slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self.running: set[asyncio.Task[None]] = set()

    async def serve(
        self, requests: AsyncIterator[bytes]
    ) -> AsyncGenerator[pb.ModelStreamInferResponse, None]:
        """Answers to ``requests``, each the bytes of a ``ModelInferRequest``."""
        reader = asyncio.create_task(self._read(requests))
        try:
            while (answer := await self.answers.get()) is not _END:
                yield answer
            await reader  # its error, if any
        finally:
            for task in [reader, *self.running]:
                task.cancel()
            for task in [reader, *self.running]:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _read(self, requests: AsyncIterator[bytes]) -> None:
        try:
            async for request in requests:
                await self.slots.acquire()
                task = asyncio.create_task(self._answer(request))  # bytes: decoded there
                self.running.add(task)
                task.add_done_callback(self._done)
            while self.running:
                await asyncio.gather(*self.running, return_exceptions=True)
        except BaseException:
            # the stream broke (or serve() is ending): what was not sent is dropped, and
            # serve() stops waiting at once, without an await that a full queue would block
            while not self.answers.empty():
                self.answers.get_nowait()
            self.answers.put_nowait(_END)
            raise
        await self.answers.put(_END)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.running.discard(task)
        self.slots.release()

    async def _answer(self, raw: bytes) -> None:
        request = pb.ModelInferRequest()
        try:
            heavy = len(raw) > OFF_LOOP_BYTES
            request = await decode_body(heavy, convert.decode_message, pb.ModelInferRequest, raw)
            entry, version, parsed = await self.servicer.parse(request)
            if parsed.rows <= entry["max_batch_size"]:
                answer = await self.servicer.infer(entry, version, parsed, self.caller)
                await self.answers.put(pb.ModelStreamInferResponse(infer_response=answer))
            else:
                await self._bulk(entry, version, parsed)
        except Exception as exc:  # one request's failure is its answer, not the stream's end
            error = as_error(exc)
            failed = convert.response(request.model_name, request.model_version, request.id)
            await self.answers.put(
                pb.ModelStreamInferResponse(error_message=error.message, infer_response=failed)
            )

    async def _bulk(
        self, entry: dict[str, Any], version: str, parsed: convert.InferRequest
    ) -> None:
        """The request as a durable job: its progress, then its outputs."""
        if not await self.servicer.catalogue.serving(entry["name"]):
            raise Unavailable(
                f"model '{entry['name']}' is not ready: {config.not_ready_reason(entry)}",
                "model_not_ready",
            )
        async with self.service.open_job(
            entry,
            version,
            parsed.arrays,
            owner=self.caller.tenant,
            outputs=parsed.outputs,
            priority=hub_priority(parsed.priority),
            parameters=parsed.parameters or None,
        ) as job:
            record = job.record
            total = int(record["rows"])

            def progress(done: int, final: bool = False) -> dict[str, bool | int | str]:
                return {
                    "job_id": record["id"],
                    "done": done,
                    "total": total,
                    "triton_final_response": final,
                }

            self._progress(entry["name"], version, parsed.id, progress(0))
            async for event in job.events():
                if event.type is EventType.PROGRESS:
                    self._progress(entry["name"], version, parsed.id, progress(event.data["done"]))
        if record["status"] == JobStatus.FAILED:
            raise InferenceFailed(f"job {record['id']} failed: {record.get('error')}")
        if record["status"] != JobStatus.SUCCEEDED:
            raise InferenceFailed(f"job {record['id']} was {record['status']}", "job_canceled")
        packed = record.get("outputs")  # small ones ride in the record; else they are stored once
        if packed is None:
            _, packed = await self.service.outputs(record["id"], owner=record["owner"])
        answer = convert.response(
            entry["name"],
            version,
            parsed.id,
            packed,
            raw=parsed.raw,
            parameters=progress(total, final=True),
        )
        await self.answers.put(pb.ModelStreamInferResponse(infer_response=answer))

    def _progress(
        self, model: str, version: str, request_id: str, parameters: dict[str, bool | int | str]
    ) -> None:
        """A progress response, unless the answers queue is full: the next one says more."""
        answer = convert.response(model, version, request_id, parameters=parameters)
        with contextlib.suppress(asyncio.QueueFull):
            self.answers.put_nowait(pb.ModelStreamInferResponse(infer_response=answer))
