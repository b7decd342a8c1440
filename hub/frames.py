"""What is computed once per event for all of its subscribers: its stream key, its SSE frame
(also as an HTTP chunk), and its WebSocket frame (header and payload, ready for the wire).

An event reaches every subscriber as the same object (the fan-out hands it around), so each
encoding is kept on the event itself, as ``functools.cached_property`` would keep it: the first
subscriber pays for it, the others share the bytes. ``ENCODED`` counts the encodings per
transport (a test checks that N subscribers cost one).
"""

from __future__ import annotations

import struct
from collections import Counter
from typing import Any

from contract.events import Event, stream_key

ENCODED: Counter[str] = Counter()
"""Events encoded, per transport ("sse", "ws")."""


def _memo(event: Event) -> dict[str, Any]:
    return vars(event)  # a frozen dataclass's own dict, where cached properties live too


def key(event: Event) -> tuple[int, int]:
    """The event's id as a comparable tuple (``stream_key``), parsed once."""
    memo = _memo(event)
    found = memo.get("_stream_key")
    if found is None:
        found = memo["_stream_key"] = stream_key(event.id)
    return found  # type: ignore[no-any-return]


def sse(event: Event) -> bytes:
    """The event as one Server-Sent Events frame."""
    memo = _memo(event)
    found = memo.get("_sse_frame")
    if found is None:
        ENCODED["sse"] += 1
        found = memo["_sse_frame"] = event.sse
    return found  # type: ignore[no-any-return]


def sse_chunk(event: Event) -> bytes:
    """The SSE frame as one chunk of a chunked HTTP/1.1 body (RFC 9112, section 7.1)."""
    memo = _memo(event)
    found = memo.get("_sse_chunk")
    if found is None:
        found = memo["_sse_chunk"] = chunk(sse(event))
    return found  # type: ignore[no-any-return]


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def ws(event: Event) -> bytes:
    """The event as one WebSocket text frame, header included (a server's frames are not
    masked, so every socket can be sent the same bytes)."""
    memo = _memo(event)
    found = memo.get("_ws_frame")
    if found is None:
        ENCODED["ws"] += 1
        # the bytes of ``event.ws``, without its str
        found = memo["_ws_frame"] = text_frame(b'{"type":"event","event":%s}' % event.json)
    return found  # type: ignore[no-any-return]


def text_frame(payload: bytes) -> bytes:
    """A final, unmasked WebSocket text frame (RFC 6455, section 5.2)."""
    size = len(payload)
    if size < 126:
        head = struct.pack("!BB", 0x81, size)
    elif size < 1 << 16:
        head = struct.pack("!BBH", 0x81, 126, size)
    else:
        head = struct.pack("!BBQ", 0x81, 127, size)
    return head + payload
