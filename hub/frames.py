"""What is computed once per event for all of its subscribers: its stream key, its SSE frame
(also as an HTTP chunk), its frame in the all-jobs feed, and its WebSocket frame (header and
payload, ready for the wire).

In the all-jobs feed of a hub that reads several pools, an SSE frame's ``id:`` is a resume token
(``position.Position``: ids of two pools' logs do not compare), so that a browser's
``EventSource`` resumes exactly with ``Last-Event-ID``. The fan-out stamps each event with its
position (``stamp``): every pool it reads, from where it began to read it, past every event it
has dispatched up to this one (of every tenant for an admin's feed, of the event's owner for
the owner's: a tenant's ids tell nothing of the others' events). A live subscriber that has
every event before it stands exactly there, so its frame, token included, is the same bytes
for all of them: at most two encodings per event, an admin's and its owner's. A subscriber still replaying, or ahead of the fan-out (its replay read what is
still on its way), is sent its own token instead (``resumed``, hub/delivery.py decides).

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
from contract.position import Position

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


def stamp(event: Event, every: Position, owner: Position) -> None:
    """Mark a dispatched event with the fan-out's positions at it: over every tenant's events
    (an admin's feed) and over its owner's (the owner's feed). Unmarked: the hub reads one
    pool, whose plain ids are exact."""
    memo = _memo(event)
    memo["_position"], memo["_owned"] = every, owner


def position(event: Event, every: bool) -> Position | None:
    """The fan-out's position at the event for a feed of ``every`` tenant's events or of its
    owner's (None: replayed, or a hub of one pool)."""
    return _memo(event).get("_position" if every else "_owned")  # type: ignore[no-any-return]


def feed_sse(event: Event, every: bool) -> bytes:
    """The event as a frame of the all-jobs feed (of ``every`` tenant's events, or of its
    owner's): its ``id:`` the fan-out's position at it (its plain id where it has none)."""
    memo = _memo(event)
    name = "_feed_sse" if every else "_own_feed_sse"
    found = memo.get(name)
    if found is None:
        at = position(event, every)
        if at is None:
            found = sse(event)
        else:
            ENCODED["sse"] += 1
            found = _sse_with_id(event, str(at).encode())
        memo[name] = found
    return found  # type: ignore[no-any-return]


def feed_sse_chunk(event: Event, every: bool) -> bytes:
    """``feed_sse`` as one chunk of a chunked HTTP/1.1 body."""
    memo = _memo(event)
    name = "_feed_sse_chunk" if every else "_own_feed_sse_chunk"
    found = memo.get(name)
    if found is None:
        found = memo[name] = chunk(feed_sse(event, every))
    return found  # type: ignore[no-any-return]


def resumed(event: Event, token: str) -> bytes:
    """The event as a frame of one subscriber's feed, with its own resume token: not shared."""
    return _sse_with_id(event, token.encode())


def _sse_with_id(event: Event, token: bytes) -> bytes:
    # event.sse's frame under another id (orjson writes no newlines)
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (token, event.type.value.encode(), event.json)


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
