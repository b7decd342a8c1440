"""A job as the hub holds and shows it: its record kept up to date by its events while a
request waits on it, and the view clients get."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from contract import outputs as outputs_store
from contract.events import Event, EventType, JobStatus
from contract.records import step_fields
from contract.tensors import packed_to_json
from hub.delivery import Delivery
from hub.webhooks import record as webhook_record

FINISHED = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED})


@dataclass
class PendingJob:
    """A job just queued, and its events as they come: the record keeps up with them."""

    record: dict[str, Any]
    feed: Delivery

    @property
    def finished(self) -> bool:
        return self.record["status"] in FINISHED

    async def finish(self, wait_s: float) -> None:
        """Follow the events until the job ends or ``wait_s`` passes; no read of the record.
        The fan-out applies live events to the record as it dispatches them (``_Apply``): the
        waiting request wakes once, at the end, not for each event."""
        self.feed.attach(_Apply(self.record))
        async for _ in self.events(wait_s):
            pass

    async def events(self, wait_s: float | None = None) -> AsyncIterator[Event]:
        """The job's events as they come, each applied to the record first, until the job ends
        or ``wait_s`` passes (None: until it ends)."""
        deadline = None if wait_s is None else time.monotonic() + wait_s
        while not self.finished:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            item = await self.feed.get(remaining)
            if item is None:
                return
            if isinstance(item, Event):
                apply_event(self.record, item)
                yield item


class _Apply:
    """A delivery's sink (``hub.delivery.Sink``) that applies a job's events to its record as
    they come, and leaves the rest (the job's end: ``Done``) to its waiting request."""

    resume_tokens = False

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record

    def ready(self) -> bool:
        return True

    def send(self, items: list[Any]) -> bool:
        while items and isinstance(items[0], Event):
            apply_event(self.record, items.pop(0))
        return False  # nothing to flush

    def flush(self) -> None:
        pass


def apply_event(record: dict[str, Any], event: Event) -> None:
    """Bring a job record up to date with one of its events, as the worker changed it."""
    if event.type not in (EventType.PROGRESS, EventType.OUTPUT):
        record["status"] = event.type.value
    record.update(step_fields(event.type, event.data, event.ts))


def job_view(record: dict[str, Any], *, with_outputs: bool = True) -> dict[str, Any]:
    """A job as clients see it: small outputs as V2 JSON tensors (``with_outputs``), large
    ones as their summary, and its URLs."""
    job_id = record["id"]
    outputs = record.get("outputs") if with_outputs else None
    urls = {
        "self": f"/v1/jobs/{job_id}",
        "events": f"/v1/jobs/{job_id}/events",
        "cancel": f"/v1/jobs/{job_id}/cancel",
    }
    if record["status"] == JobStatus.SUCCEEDED:
        urls["outputs"] = outputs_store.url(job_id)
    view = {
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
        "urls": urls,
    }
    if "outputs_summary" in record:
        view["outputs_summary"] = record["outputs_summary"]
        view["outputs_bytes"] = record.get("outputs_bytes")
    if "webhook_url" in record:
        view["webhook"] = webhook_record.view(record)
    return view
