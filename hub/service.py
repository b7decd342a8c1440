"""The one service every transport calls: submit, get, list, cancel, wait.

Routers only convert between their wire format and these calls, so that HTTP, WebSocket and the
V2 protocol behave the same.
"""

from __future__ import annotations

import contextlib
import math
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from hub.catalogue import Catalogue
from hub.errors import HubError, not_found
from hub.fanout import GAP, Fanout, Subscription
from hub.jobstore import Created, Event, JobStore, stream_key
from hub.logs import current_request_id
from hub.protocol import EventType, JobStatus, datatype_of, pack_tensor, packed_to_json
from hub.ratelimit import RateLimiter
from hub.schemas import JobRequest
from hub.validation import check_arrays, check_outputs, decode_inputs

FINISHED = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED})


@dataclass
class PendingJob:
    """A job just queued, and its events as they come: the record keeps up with them."""

    store: JobStore
    record: dict[str, Any]
    sub: Subscription | None  # None for a repeat of an earlier submission: nothing to follow

    @property
    def finished(self) -> bool:
        return self.record["status"] in FINISHED

    async def finish(self, wait_s: float) -> None:
        """Follow the events until the job ends or ``wait_s`` passes; no read of the record,
        except after a gap in the events (Redis reconnected), when the stored record decides."""
        deadline = time.monotonic() + wait_s
        while self.sub is not None and not self.finished:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            item = await self.sub.get(remaining)
            if isinstance(item, Event):
                apply_event(self.record, item)
            elif item is GAP:
                self.record = await self.store.get(self.record["id"]) or self.record


class JobService:
    def __init__(
        self,
        store: JobStore,
        catalogue: Catalogue,
        fanout: Fanout,
        *,
        max_queued: int = 10_000,
        rate: RateLimiter | None = None,
        resync_s: float = 5.0,
    ) -> None:
        self.store = store
        self.catalogue = catalogue
        self.fanout = fanout
        self.max_queued = max_queued
        self.rate = rate
        self.resync_s = resync_s

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
        idempotency: tuple[str, str] | None = None,
        request_id: str | None = None,
    ) -> AsyncIterator[PendingJob]:
        """Queue a job, and follow its events while the block runs (subscribed before the job
        exists, so that none is missed). ``idempotency`` is (key, fingerprint); ``request_id``
        (by default the current request's) goes with the job to the worker's log lines."""
        check_arrays(model, version, arrays)
        check_outputs(model, version, outputs)
        if self.rate is not None and (wait_ms := await self.rate.wait_ms(owner)):
            raise HubError(
                429,
                "rate_limited",
                f"over {self.rate.per_s:g} submissions a second; retry in {wait_ms} ms",
                {"Retry-After": str(math.ceil(wait_ms / 1000))},
            )
        job_id = uuid.uuid4().hex
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
        job_kwargs = {
            "model": model["name"],
            "version": version,
            "owner": owner,
            "inputs": [pack_tensor(n, a) for n, a in arrays.items()],
            "outputs": outputs,
            "request_id": record["request_id"],
        }
        async with self.fanout.subscribe(("job", job_id)) as sub:
            created, existing = await self.store.create(
                record,
                job_kwargs,
                pool=model["pool"],
                idempotency=(owner, idempotency[0]) if idempotency else None,
                priority=priority,
                max_queued=self.max_queued,
            )
            if created is Created.FULL:
                raise HubError(
                    429,
                    "queue_full",
                    f"the queue of pool '{model['pool']}' holds {self.max_queued} jobs; "
                    "retry later",
                    {"Retry-After": "1"},
                )
            if created is Created.REPEAT:  # the first job of this key, as it is now
                yield PendingJob(self.store, await self._repeat(existing, record, owner), None)
            else:
                yield PendingJob(self.store, record, sub)

    async def _repeat(self, existing: str, record: dict[str, Any], owner: str) -> dict[str, Any]:
        job_id, _, first_fingerprint = existing.partition(" ")
        if first_fingerprint != record["fingerprint"]:
            raise HubError(
                409,
                "idempotency_conflict",
                "this Idempotency-Key was already used for a different request; use a new key",
            )
        return await self.record(job_id, owner)

    async def get(self, job_id: str, *, owner: str | None) -> dict[str, Any]:
        """The job, if ``owner`` may see it (None: an admin, who sees every job)."""
        return job_view(await self.record(job_id, owner))

    async def record(self, job_id: str, owner: str | None) -> dict[str, Any]:
        """The stored record (outputs still packed), if ``owner`` may see it; else 404."""
        record = await self.store.get(job_id)
        if record is None or (owner is not None and record["owner"] != owner):
            raise not_found("job", job_id)  # the same answer as for a job that does not exist
        return record

    async def follow(
        self, job_id: str, *, owner: str | None, after: str = "0"
    ) -> AsyncIterator[Event]:
        """The job's events after ``after``, until its terminal event (404 first if unseen)."""
        _check_event_id(after)
        record = await self.record(job_id, owner)  # the raw record: no outputs to convert
        return self._follow(job_id, after, finished=record["status"] in FINISHED)

    async def _follow(self, job_id: str, after: str, *, finished: bool) -> AsyncIterator[Event]:
        # Subscribe first, then replay the stored events, then go live dropping what the replay
        # already gave: no event is lost however the race falls. A quiet spell re-reads the
        # stream, which recovers anything pub/sub lost while Redis was away.
        async with self.fanout.subscribe(("job", job_id)) as sub:
            last = stream_key(after)
            pending = await self.store.events(job_id, after)
            while True:
                for event in pending:
                    if stream_key(event.id) <= last:
                        continue
                    last = stream_key(event.id)
                    yield event
                    if event.terminal:
                        return
                if finished:
                    return  # resumed after the terminal event: nothing more will come
                live = await sub.get(self.resync_s)
                if isinstance(live, Event):
                    pending = [live]
                else:  # a gap, or a quiet spell: catch up from the log
                    pending = await self.store.events(job_id, _event_id(last))

    async def feed(
        self,
        *,
        owner: str | None,
        models: frozenset[str] = frozenset(),
        job_ids: frozenset[str] = frozenset(),
        after: str | None = None,
    ) -> AsyncIterator[Event | None]:
        """Live events of the caller's jobs (filtered by model and job), from ``after`` when given.

        The iterator yields None when ``after`` is older than what the capped log still holds:
        events were lost, and the client must reload its state.
        """
        _check_event_id(after or "0")
        return self._feed(owner, models, job_ids, after)

    async def _feed(
        self, owner: str | None, models: frozenset[str], job_ids: frozenset[str], after: str | None
    ) -> AsyncIterator[Event | None]:
        def match(event: Event) -> bool:
            return (
                (owner is None or event.owner == owner)
                and (not models or event.model in models)
                and (not job_ids or event.job_id in job_ids)
            )

        if job_ids:
            where = [("job", j) for j in job_ids]
        elif models:
            where = [("model", m) for m in models]
        else:
            where = [("owner", owner) if owner is not None else ("all", "")]
        async with self.fanout.subscribe(*where, match=match) as sub:
            last = stream_key(after or "0")
            if after is not None:
                if not await self.store.log_holds(after):
                    yield None
                pending = [e for e in await self.store.log_after(after) if match(e)]
            else:
                pending = []
            while True:
                for event in pending:
                    if stream_key(event.id) > last:
                        last = stream_key(event.id)
                        yield event
                live = await sub.get(self.resync_s)
                if isinstance(live, Event):
                    pending = [live]
                elif live is GAP:
                    pending = [e for e in await self.store.log_after(_event_id(last)) if match(e)]
                else:
                    pending = []

    async def list(
        self,
        *,
        owner: str | None,
        model: str | None = None,
        status: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Jobs newest first; ``cursor`` (the last page's ``next_cursor``) continues below."""
        before = _cursor(cursor)
        found: list[dict[str, Any]] = []
        for _ in range(20):  # bounded: a sparse filter returns a partial page and a cursor
            ids = await self.store.recent_ids(before, max(limit * 2, 50))
            if not ids:
                return found, None
            for (job_id, score), record in zip(
                ids, await self.store.get_many([i for i, _ in ids]), strict=True
            ):
                before = (score, job_id)
                if record is None or (owner is not None and record["owner"] != owner):
                    continue
                if (model and record["model"] != model) or (status and record["status"] != status):
                    continue
                found.append(job_view(record))
                if len(found) == limit:
                    return found, f"{score:.0f}:{job_id}"
        return found, f"{before[0]:.0f}:{before[1]}" if before else None

    async def cancel(self, job_id: str, *, owner: str | None) -> dict[str, Any]:
        record = await self.record(job_id, owner)
        status = await self.store.cancel(
            job_id, model=record["model"], owner=record["owner"], pool=record["pool"]
        )
        if status in FINISHED:
            raise HubError(
                409, "job_finished", f"job '{job_id}' already {status}; nothing to cancel"
            )
        return await self.get(job_id, owner=owner)


def _cursor(cursor: str | None) -> tuple[float, str] | None:
    if cursor is None:
        return None
    ms, _, job_id = cursor.partition(":")
    if not ms.isdigit() or not job_id:
        raise HubError(400, "invalid_cursor", f"{cursor!r} is not a next_cursor of /v1/jobs")
    return float(ms), job_id


def _check_event_id(event_id: str) -> None:
    try:
        stream_key(event_id)
    except ValueError as exc:
        raise HubError(400, "invalid_event_id", str(exc)) from None


def _event_id(key: tuple[int, int]) -> str:
    return f"{key[0]}-{key[1]}"


def apply_event(record: dict[str, Any], event: Event) -> None:
    """Bring a job record up to date with one of its events, as the worker changed it."""
    data = event.data
    if event.type is EventType.STARTED:
        record.update(status="started", attempt=data["attempt"], started_at=event.ts)
    elif event.type is EventType.PROGRESS:
        record["progress"] = {"done": data["done"], "total": data["total"]}
    elif event.terminal:
        record.update(status=event.type.value, finished_at=event.ts)
        record.update({k: data[k] for k in ("outputs", "error") if k in data})


def job_view(record: dict[str, Any]) -> dict[str, Any]:
    """A job as clients see it: outputs as V2 JSON tensors, and its URLs."""
    job_id = record["id"]
    outputs = record.get("outputs")
    return {
        "id": job_id,
        "model": record["model"],
        "version": record["version"],
        "status": record["status"],
        "attempt": record.get("attempt", 0),
        "rows": record.get("rows"),
        "created_at": record["created_at"],
        "started_at": record.get("started_at"),
        "finished_at": record.get("finished_at"),
        "progress": record.get("progress"),
        "inputs": record.get("inputs"),
        "outputs": [packed_to_json(o) for o in outputs] if outputs else None,
        "error": record.get("error"),
        "urls": {
            "self": f"/v1/jobs/{job_id}",
            "events": f"/v1/jobs/{job_id}/events",
            "cancel": f"/v1/jobs/{job_id}/cancel",
        },
    }
