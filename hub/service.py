"""The one service every transport calls: submit, get, list, cancel, wait.

Routers only convert between their wire format and these calls, so that HTTP, WebSocket and the
V2 protocol behave the same.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import numpy as np

from contract import inputs as inputs_store
from contract import keys
from contract import outputs as outputs_store
from contract.errors import Conflict, MalformedRequest, NotFound, OverCapacity, Unavailable
from contract.events import Event, JobStatus, stream_key
from contract.jobstore import Created, JobStore
from contract.logs import JOBS, current_request_id, job_line, note_job
from contract.position import Position
from contract.tensors import datatype_of, pack_tensor
from hub.catalogue import Catalogue
from hub.delivery import Delivery, Done, Reset, Sink, Topic, delivery
from hub.fanout import Fanout
from hub.jobview import FINISHED, PendingJob, job_view
from hub.observer import NOBODY, Observer
from hub.online import OnlineLane
from hub.ratelimit import RateLimiter
from hub.schemas import JobRequest, Webhook
from hub.streams import TenantStreams
from hub.subscription import Tick
from hub.tracing import carried
from hub.validation import check_arrays, check_outputs, decode_inputs
from hub.webhooks import record as webhook_record
from hub.webhooks.policy import WebhookPolicy


class JobService:
    def __init__(
        self,
        store: JobStore,
        catalogue: Catalogue,
        fanout: Fanout,
        online: OnlineLane,
        *,
        webhooks: WebhookPolicy,
        max_queued: int = 10_000,
        max_queued_per_tenant: int = 1_000,
        max_stored_per_tenant: int = 2 * 1024**3,
        max_streams_per_tenant: int = 100,
        rate: RateLimiter | None = None,
        observer: Observer = NOBODY,
    ) -> None:
        self.observer = observer
        self.webhooks = webhooks
        self.store = store
        self.catalogue = catalogue
        self.fanout = fanout
        self.online = online
        self.max_queued = max_queued
        self.max_queued_per_tenant = max_queued_per_tenant
        self.max_stored_per_tenant = max_stored_per_tenant
        self.rate = rate
        self.streams = TenantStreams(max_streams_per_tenant)

    async def submit(
        self,
        request: JobRequest,
        *,
        owner: str,
        idempotency_key: str | None = None,
        wait_s: float = 0.0,
        request_id: str | None = None,
    ) -> dict[str, Any]:
        """Check a ``/v1`` request, queue the job, and (with ``wait_s``) wait for it to end."""
        model, version = await self.catalogue.model(request.model, request.version)
        return await self.submit_arrays(
            model,
            version,
            decode_inputs(model, version, request),
            owner=owner,
            outputs=request.outputs,
            priority=request.priority,
            parameters=request.parameters,
            webhook=request.webhook,
            stream_outputs=request.stream_outputs,
            idempotency=(idempotency_key, request.fingerprint()) if idempotency_key else None,
            wait_s=wait_s,
            request_id=request_id,
        )

    async def submit_arrays(
        self,
        model: dict[str, Any],
        version: str,
        arrays: dict[str, np.ndarray],
        *,
        wait_s: float = 0.0,
        **options: Any,
    ) -> dict[str, Any]:
        """Queue a job of decoded inputs (any transport) and, with ``wait_s``, wait for it to
        end; ``options`` are ``open_job``'s."""
        async with self.open_job(model, version, arrays, **options) as job:
            if wait_s > 0:
                await job.finish(wait_s)
        return job_view(job.record)

    @contextlib.asynccontextmanager
    async def open_job(
        self,
        model: dict[str, Any],
        version: str,
        arrays: dict[str, np.ndarray],
        *,
        owner: str,
        outputs: list[str] | None = None,
        priority: int = 0,
        parameters: dict[str, Any] | None = None,
        webhook: Webhook | None = None,
        stream_outputs: bool = False,
        incoming: Mapping[str, AsyncIterable[memoryview]] | None = None,
        idempotency: tuple[str, str] | None = None,
        request_id: str | None = None,
    ) -> AsyncIterator[PendingJob]:
        """Queue a job, and follow its events while the block runs (subscribed before the job
        exists, so that none is missed). ``idempotency`` is (key, fingerprint); ``request_id``
        (by default the current request's) goes with the job to the worker's log lines.
        ``incoming``: the bytes of inputs still arriving (their ``arrays`` are placeholders),
        stored as they come."""
        await self._admit(model, version, arrays, outputs, owner)
        if webhook is not None:
            await self.webhooks.check(webhook.url, owner)
        job_id = keys.new_job_id(model["pool"])
        record = {
            "id": job_id,
            "model": model["name"],
            "version": version,
            "owner": owner,
            "pool": model["pool"],
            "status": JobStatus.QUEUED.value,
            "attempt": 0,
            "created_at": time.time(),
            "rows": next(iter(arrays.values())).shape[0],
            "inputs": [
                {"name": n, "datatype": datatype_of(a), "shape": list(a.shape)}
                for n, a in arrays.items()
            ],
            "parameters": parameters,
            "fingerprint": idempotency[1] if idempotency else None,
            "request_id": request_id or current_request_id(),
        }
        if webhook is not None:
            record.update(webhook_record.fields(webhook))
        # large inputs go beside the arq job, written by _create
        packed, apart = inputs_store.pack(arrays, incoming or {})
        job_kwargs = {
            "model": model["name"],
            "version": version,
            "owner": owner,
            "inputs": packed,
            "outputs": outputs,
            "request_id": record["request_id"],
            **carried(**{"inferhub.job_id": job_id}),  # the trace goes with the job
        }
        if stream_outputs:
            job_kwargs["stream_outputs"] = True
        # the pool's events read live before its first job here is created
        await self.fanout.ensure(model["pool"])
        async with delivery(self.store, self.fanout, owner) as feed:
            feed.follow(job_id, Topic.job(job_id))  # before the job exists: nothing is missed
            created, existing = await self._create(
                record,
                job_kwargs,
                apart,
                pool=model["pool"],
                idempotency=(owner, idempotency[0]) if idempotency else None,
                priority=priority,
            )
            if created is Created.FULL:
                raise OverCapacity(
                    f"the queue of pool '{model['pool']}' holds {self.max_queued} jobs; "
                    "retry later",
                    "queue_full",
                    headers={"Retry-After": "1"},
                )
            if created is Created.OWNER_FULL:
                raise OverCapacity(
                    f"you have {self.max_queued_per_tenant} jobs waiting to start "
                    "(INFERHUB_MAX_QUEUED_PER_TENANT); retry when some have started",
                    "tenant_queue_full",
                    headers={"Retry-After": "1"},
                )
            if created is Created.OWNER_STORAGE_FULL:
                raise OverCapacity(
                    f"your jobs of the last {self.store.limits.ttl_s} s store {int(existing):,} "
                    f"bytes of inputs and parameters; this one would pass "
                    f"INFERHUB_MAX_STORED_BYTES_PER_TENANT ({self.max_stored_per_tenant:,}); "
                    "retry when older jobs expire",
                    "tenant_storage_full",
                    headers={"Retry-After": "60"},
                )
            if created is Created.REPEAT:  # the first job of this key, followed as it is now
                feed.drop(job_id)
                first = self._repeat(existing, record)
                feed.follow(first, Topic.job(first))
                record = await self.record(first, owner)
            yield PendingJob(record, feed)

    async def infer(
        self,
        model: dict[str, Any],
        version: str,
        arrays: dict[str, np.ndarray],
        *,
        owner: str,
        outputs: list[str] | None = None,
        priority: int = 0,
        timeout_s: float | None = None,
        declared: bool = False,
    ) -> list[dict[str, Any]]:
        """Run one request on the online lane (no record, no events): its packed outputs.
        ``declared``: as ``check_arrays`` says (the V2 route checked each tensor already)."""
        await self._admit(model, version, arrays, outputs, owner, declared=declared)
        workers = await self.catalogue.serving(model["name"])
        if not workers:
            raise Unavailable(
                f"model '{model['name']}' is not ready: no live worker of pool '{model['pool']}'",
                "model_not_ready",
            )
        return await self.online.infer(
            model,
            version,
            [pack_tensor(n, a) for n, a in arrays.items()],
            rows=next(iter(arrays.values())).shape[0],
            outputs=outputs,
            priority=priority,
            timeout_s=timeout_s or float(model["timeout_s"]),
            workers=len(workers),
        )

    async def _admit(
        self,
        model: dict[str, Any],
        version: str,
        arrays: dict[str, np.ndarray],
        outputs: list[str] | None,
        owner: str,
        *,
        declared: bool = False,
    ) -> None:
        """What both lanes check before a request goes anywhere."""
        check_arrays(model, version, arrays, declared=declared)
        check_outputs(model, version, outputs)
        if self.rate is not None and (wait_ms := await self.rate.wait_ms(owner)):
            raise OverCapacity(
                f"over {self.rate.per_s:g} submissions a second; retry in {wait_ms} ms",
                "rate_limited",
                headers={"Retry-After": str(math.ceil(wait_ms / 1000))},
            )

    async def _create(
        self,
        record: dict[str, Any],
        job_kwargs: dict[str, Any],
        apart: Sequence[inputs_store.Source],
        **options: Any,
    ) -> tuple[Created, str]:
        self.observer.job_creating(record)
        created = Created.FULL
        try:
            # written first, and removed again unless the job is created
            stored = await inputs_store.store(
                self.store.redis, record["id"], apart, self.store.limits.ttl_s
            )
            created, existing = await self.store.create(
                record,
                job_kwargs,
                max_queued=self.max_queued,
                max_queued_per_owner=self.max_queued_per_tenant,
                max_stored_per_owner=self.max_stored_per_tenant,
                inputs_bytes=stored,
                **options,
            )
        finally:
            self.observer.job_created(record, created is Created.CREATED)
            if apart and created is not Created.CREATED:
                await inputs_store.remove(self.store.redis, record["id"])
        if created is Created.CREATED:
            note_job(record["id"])
            job_line(
                "job queued",
                event="queued",
                job_id=record["id"],
                model=record["model"],
                rows=record["rows"],
                pool=record["pool"],
            )
        return created, existing

    def _repeat(self, existing: str, record: dict[str, Any]) -> str:
        job_id, _, first_fingerprint = existing.partition(" ")
        if first_fingerprint != record["fingerprint"]:
            raise Conflict(
                "this Idempotency-Key was already used for a different request; use a new key",
                "idempotency_conflict",
            )
        return job_id

    async def get(self, job_id: str, *, owner: str | None) -> dict[str, Any]:
        """The job, if ``owner`` may see it (None: an admin, who sees every job)."""
        return job_view(await self.record(job_id, owner))

    async def record(self, job_id: str, owner: str | None) -> dict[str, Any]:
        """The stored record (outputs still packed), if ``owner`` may see it; else 404."""
        record = await self.store.get(job_id)
        if record is None or (owner is not None and record["owner"] != owner):
            # the same answer as for a job that does not exist
            raise NotFound(f"job '{job_id}' does not exist", "job_not_found")
        return record

    async def follow(
        self, job_id: str, *, owner: str | None, after: str = "0", sink: Sink | None = None
    ) -> AsyncIterator[list[Event | Reset | Tick]] | None:
        """The job's events after ``after``, until its terminal event (404 first if unseen);
        None when the job has ended and ``after`` is at or past its terminal event, so that
        nothing will ever come (the terminal event is a job's last)."""
        _check_event_id(after)
        record = await self.record(job_id, owner)  # the raw record: no outputs to convert
        topic, finished = Topic.job(job_id), record["status"] in FINISHED
        if finished and after != "0" and not await self.store.events(job_id, after, count=1):
            return None
        self.streams.check(owner)
        return self._stream(
            owner, lambda feed: feed.follow(job_id, topic, after, finished=finished), sink
        )

    async def feed(
        self,
        *,
        owner: str | None,
        models: frozenset[str] = frozenset(),
        job_ids: frozenset[str] = frozenset(),
        after: str | None = None,
        sink: Sink | None = None,
    ) -> AsyncIterator[list[Event | Reset | Tick]]:
        """Live events of the caller's jobs (filtered by model and job), from ``after`` when
        given (an event id, or a position per pool: position.Position); a Reset first when
        ``after`` is older than what the capped logs still hold."""
        _check_position(after or "0")
        self.streams.check(owner)

        def accepts(event: Event) -> bool:
            return (not models or event.model in models) and (
                not job_ids or event.job_id in job_ids
            )

        if job_ids:
            routes = tuple(("job", j) for j in job_ids)
        elif models:
            routes = tuple(("model", m) for m in models)
        else:
            routes = (("owner", owner) if owner is not None else ("all", ""),)
        topic = Topic(routes, accepts=accepts)
        return self._stream(owner, lambda feed: feed.follow("feed", topic, after), sink)

    async def _stream(
        self, owner: str | None, start: Callable[[Delivery], None], sink: Sink | None
    ) -> AsyncIterator[list[Event | Reset | Tick]]:
        """What is pending at once, in one list (a stream sends it in one write), until the
        topic is done; a Tick now and then while nothing comes. With a ``sink``, live events
        may go straight to it instead (Delivery.attach)."""
        with self.streams.slot(owner):
            async with delivery(self.store, self.fanout, owner) as feed:
                if sink is not None:
                    feed.attach(sink)
                start(feed)
                while True:
                    items = await feed.batch()
                    end = next((n for n, item in enumerate(items) if isinstance(item, Done)), None)
                    if end is not None:
                        if end:
                            yield items[:end]
                        return
                    yield items

    async def list(
        self,
        *,
        owner: str | None,
        model: str | None = None,
        status: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        with_outputs: bool = False,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Jobs newest first; ``cursor`` (the last page's ``next_cursor``) continues below.
        Without ``with_outputs`` no outputs are read out: a listing stays small."""
        before = _cursor(cursor)
        found: list[dict[str, Any]] = []
        for _ in range(20):  # bounded: a sparse filter returns a partial page and a cursor
            # the owner's own index: no other tenant's job is read, nor shows in the cursor
            ids = await self.store.recent_ids(owner, before, max(limit * 2, 50))
            if not ids:
                return found, None
            for (job_id, score), record in zip(
                ids, await self.store.get_many([i for i, _ in ids]), strict=True
            ):
                before = (score, job_id)
                if record is None:  # expired
                    continue
                if (model and record["model"] != model) or (status and record["status"] != status):
                    continue
                found.append(job_view(record, with_outputs=with_outputs))
                if len(found) == limit:
                    return found, f"{score:.0f}:{job_id}"
        return found, f"{before[0]:.0f}:{before[1]}" if before else None

    async def outputs(
        self, job_id: str, *, owner: str | None, rows: tuple[int, int] | None = None
    ) -> tuple[dict[str, Any], Sequence[dict[str, Any]]]:
        """The job's record and its stored outputs (packed), if ``owner`` may see it; with
        ``rows`` (start, end), those rows only: a streamed chunk, even while the job runs."""
        record = await self.record(job_id, owner)
        if rows is not None:
            (chunk,) = await self.store.chunks(job_id, [rows[0]])
            packed = outputs_store.load(chunk) if chunk is not None else []
            if packed and outputs_store.row_count(packed) == rows[1] - rows[0]:
                return record, packed
        if record["status"] != JobStatus.SUCCEEDED:
            streamed = (
                f", or a chunk it streamed (rows {rows[0]}:{rows[1]} is none)" if rows else ""
            )
            raise Conflict(
                f"job '{job_id}' is {record['status']}: only a succeeded job has outputs{streamed}",
                "no_outputs",
            )
        if record.get("outputs") is not None:  # small: the record holds them, not a key
            full = record["outputs"]
            return record, outputs_store.rows(full, *rows) if rows else full
        expired = NotFound(f"the outputs of job '{job_id}' have expired", "outputs_expired")
        blob = await self.store.outputs(job_id)
        if blob is None:
            raise expired
        ranges = outputs_store.chunk_ranges(blob)
        if ranges is None:
            full = outputs_store.load(blob)
        else:  # streamed: its chunks hold the outputs
            chunks = await self.store.chunks(job_id, [start for start, _ in ranges])
            if any(c is None for c in chunks):
                raise expired
            full = outputs_store.join([outputs_store.load(c) for c in chunks if c is not None])
        return record, outputs_store.rows(full, *rows) if rows else full

    async def cancel(self, job_id: str, *, owner: str | None) -> dict[str, Any]:
        record = await self.record(job_id, owner)
        status = await self.store.cancel(job_id, model=record["model"], owner=record["owner"])
        if status in FINISHED:
            raise Conflict(f"job '{job_id}' already {status}; nothing to cancel", "job_finished")
        JOBS.info(
            "job canceled" if status == JobStatus.QUEUED else "job cancel requested",
            extra={"event": "cancel", "job_id": job_id, "status_found": status},
        )
        return await self.get(job_id, owner=owner)


def _cursor(cursor: str | None) -> tuple[float, str] | None:
    if cursor is None:
        return None
    ms, _, job_id = cursor.partition(":")
    if not (ms.isascii() and ms.isdigit()) or not job_id:
        raise MalformedRequest(f"{cursor!r} is not a next_cursor of /v1/jobs", "invalid_cursor")
    return float(ms), job_id


def _check_event_id(event_id: str) -> None:
    try:
        stream_key(event_id)
    except ValueError as exc:
        raise MalformedRequest(str(exc), "invalid_event_id") from None


def _check_position(token: str) -> None:
    try:
        Position.parse(token)
    except ValueError as exc:
        raise MalformedRequest(str(exc), "invalid_event_id") from None
