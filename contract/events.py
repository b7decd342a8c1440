"""A job's events: one record per step, as stored in the streams and published, with the
encodings clients see (the same JSON on SSE and the WebSocket), and their ids."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from typing import Any

import orjson

from contract.tensors import packed_to_json
from contract.wire import loads


class JobStatus(StrEnum):
    QUEUED = "queued"
    STARTED = "started"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


class EventType(StrEnum):
    QUEUED = "queued"
    STARTED = "started"
    PROGRESS = "progress"
    OUTPUT = "output"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


_TYPES = {t.value: t for t in EventType}

TERMINAL = frozenset({EventType.SUCCEEDED, EventType.FAILED, EventType.CANCELED})


@dataclass(frozen=True)
class Event:
    """One event as stored: ``id`` is its stream id, ``data`` may hold packed tensors."""

    id: str
    job_id: str
    type: EventType
    ts: float
    model: str
    owner: str
    data: Mapping[str, Any] = field(default_factory=dict)

    size: int = 0  # bytes as stored: what holding it costs, for the subscribers' byte bounds

    @classmethod
    def from_wire(cls, event_id: str, raw: bytes) -> Event:
        body = loads(raw)
        return cls(
            event_id,
            body["job_id"],
            _TYPES[body["type"]],  # a dict: EnumType's lookup took a fifth of this
            body["ts"],
            body["model"],
            body["owner"],
            body.get("data", {}),
            len(raw),
        )

    @cached_property
    def key(self) -> tuple[int, int]:
        """Its id as a comparable tuple (``stream_key``), parsed once; the id came from Redis."""
        ms, _, seq = self.id.partition("-")
        return int(ms), int(seq or 0)

    @cached_property
    def json(self) -> bytes:
        """The event as clients see it, the same on SSE and WebSocket: encoded once, however
        many subscribers it goes to."""
        data = dict(self.data)
        if "outputs" in data:
            data["outputs"] = [packed_to_json(o) for o in data["outputs"]]
        view = {"id": self.id, "job_id": self.job_id, "type": self.type.value, "ts": self.ts}
        return orjson.dumps({**view, "model": self.model, "data": data})

    @cached_property
    def sse(self) -> bytes:
        """The event as one Server-Sent Events frame (orjson writes no newlines)."""
        return b"id: %s\nevent: %s\ndata: %s\n\n" % (
            self.id.encode(),
            self.type.value.encode(),
            self.json,
        )

    @cached_property
    def ws(self) -> str:
        """The event as one WebSocket message, shared by every socket it goes to."""
        return '{"type":"event","event":' + self.json.decode() + "}"

    @property
    def terminal(self) -> bool:
        return self.type in (EventType.SUCCEEDED, EventType.FAILED, EventType.CANCELED)


def stream_key(event_id: str) -> tuple[int, int]:
    """An event id (a stream id ``ms-seq``; "0" is before all) as a comparable tuple."""
    ms, _, seq = event_id.partition("-")
    parts = (ms, seq or "0")
    # isdigit() alone takes other scripts' digits ("١٢"), which Redis refuses
    if not all(p.isascii() and p.isdigit() and int(p) < 2**64 for p in parts):
        raise ValueError(
            f"{event_id[:40]!r} is not an event id (like 1700000000000-0, each part below 2^64)"
        )
    return int(ms), int(seq or 0)


def published_events(data: bytes) -> list[tuple[str, bytes]]:
    """The events of one publication on the events channel, as (id, event): one (``id
    event``), or several that one call appended (``*``, then each one's id, its length and
    itself, space-separated: append.lua's ``publish_all``)."""
    if data[:1] != b"*":
        event_id, _, raw = data.partition(b" ")
        return [(event_id.decode(), raw)]
    events, at = [], 1
    while at < len(data):
        gap = data.index(b" ", at)
        start = data.index(b" ", gap + 1) + 1
        end = start + int(data[gap + 1 : start - 1])
        events.append((data[at:gap].decode(), data[start:end]))
        at = end
    return events
