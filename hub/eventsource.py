"""What a browser's ``EventSource`` needs from the hub's SSE answers.

An ``EventSource`` reconnects by itself after a stream ends (waiting ``retry:`` milliseconds,
sending ``Last-Event-ID``), but any answer other than a ``200 text/event-stream`` closes it for
good: a ``204 No Content`` is the standard way to say "nothing more, stop" (the events route
answers it to a reconnect after a job's terminal event), and a ``429`` or ``503`` would end it
as surely. So when the hub refuses a stream for a while (too many streams, Redis unreachable,
shutting down) and the client is an ``EventSource`` (it accepts nothing but
``text/event-stream``), the refusal is a ``200`` stream that sets ``retry:`` to the wait and
ends at once with an ``event: close`` saying why: the browser comes back after the wait, with
its ``Last-Event-ID``. Other clients (curl, the Python client, which send ``Accept: */*``) get
the plain status code with ``Retry-After``.
"""

from __future__ import annotations

import orjson
from starlette.types import Scope

MEDIA_TYPE = "text/event-stream"


def is_event_source(scope: Scope) -> bool:
    """Whether the request accepts nothing but an event stream, as a browser's EventSource."""
    accept = b",".join(v for k, v in scope.get("headers", ()) if k == b"accept").decode("latin-1")
    types = {part.split(";")[0].strip() for part in accept.split(",") if part.strip()}
    return types == {MEDIA_TYPE}


def come_back(retry_ms: int, reason: str, code: str | None = None) -> bytes:
    """An event stream that asks the client to reconnect after ``retry_ms`` and ends."""
    data = {"reason": reason, **({"code": code} if code else {})}
    return b"retry: %d\r\nevent: close\r\ndata: %s\r\n\r\n" % (retry_ms, orjson.dumps(data))
