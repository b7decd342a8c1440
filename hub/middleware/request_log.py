"""ASGI middleware: a request id for every request and WebSocket, and its access log line.

The id is taken from ``X-Request-ID`` or from the trace id of a W3C ``traceparent`` header,
else made up; it is echoed in the ``X-Request-ID`` response header and bound to the log context
(``contract/logs.py``) while the request runs.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contract.logs import ACCESS, bound, info_line

RequestObserver = Callable[[Scope, int, float], None]

# probes and scrapes are logged at DEBUG: every few seconds, forever
QUIET_PATHS = ("/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready")

_SAFE_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")


HOT = "inferhub.hot"
"""The scope key a hot route sets (``hub/v2/lean.py``): its successful requests, thousands a
second, are logged at DEBUG; its failures at INFO as any other."""


def request_id_from(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The request id of a request with ``headers`` (the ASGI scope's: lower-case names)."""
    given = traceparent = b""
    for name, value in headers:
        if name == b"x-request-id":
            given = value
        elif name == b"traceparent":
            traceparent = value
    return request_id(given, traceparent)


def request_id(x_request_id: bytes, traceparent: bytes) -> str:
    """``X-Request-ID`` when it is a sane token, else the ``traceparent`` trace id, else a new
    one (the headers' raw values; empty when absent)."""
    given = x_request_id.decode("latin-1").strip() if x_request_id else ""
    if given and _SAFE_ID.fullmatch(given):
        return given
    parent = traceparent.decode("latin-1").strip().lower() if traceparent else ""
    match = _TRACEPARENT.fullmatch(parent) if parent else None
    if match and match.group(1) != "0" * 32:
        return match.group(1)
    # 128 random bits as uuid4's hex is long: from the process's generator (reseeded at
    # fork), not os.urandom's system call per request; a request id is not a secret
    return f"{random.getrandbits(128):032x}"


class RequestLog:
    """ASGI middleware: a request id for every request and WebSocket, echoed in
    ``X-Request-ID``, and one log line when it ends (method, path, status, duration, ids).

    ``observe(scope, status, seconds)`` is called at the end as well (the HTTP metrics).
    """

    def __init__(self, app: ASGIApp, observe: RequestObserver | None = None) -> None:
        self.app = app
        self.observe = observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope["headers"])
        exchange = Exchange(send, request_id)
        start = time.perf_counter()
        with bound(request_id=request_id) as context:
            try:
                await self.app(scope, receive, exchange.send)
            except BaseException:
                exchange.status = exchange.status or 500
                raise
            finally:
                self.ended(scope, exchange, time.perf_counter() - start, context)

    def ended(
        self,
        scope: Scope,
        exchange: Exchange,
        seconds: float,
        context: MutableMapping[str, Any],
    ) -> None:
        """The request's log line and its observation (``hub/middleware/hot_path.py`` too)."""
        access_line(scope, exchange.status, exchange.close_code, seconds, context)
        if self.observe is not None:
            self.observe(scope, exchange.status, seconds)


def access_line(
    scope: Scope,
    status: int,
    close_code: int | None,
    seconds: float,
    context: MutableMapping[str, Any],
) -> None:
    """A request's line as it ends: at DEBUG for probes and a hot route's successes, else at
    INFO, with the jobs it submitted."""
    path = scope.get("path", "")
    method = scope.get("method", "WS")
    quiet = path in QUIET_PATHS or (status < 400 and scope.get(HOT, False))
    level = logging.DEBUG if quiet else logging.INFO
    if not ACCESS.isEnabledFor(level):
        return
    client = scope.get("client")
    fields: dict[str, Any] = {
        "method": method,
        "path": path,
        "status": status,
        "duration_ms": round(seconds * 1000, 3),
        "client": f"{client[0]}:{client[1]}" if client else None,
    }
    if close_code is not None:
        fields["close_code"] = close_code
    jobs: list[str] = context.get("_jobs") or []
    if len(jobs) == 1:
        fields["job_id"] = jobs[0]
    elif jobs:
        fields["job_ids"] = jobs
    closed = f" close {close_code}" if close_code is not None else ""
    message = f"{method} {path} {status}{closed} {seconds * 1000:.1f}ms"
    if level == logging.INFO:  # each job's request has one: written as a job's line is
        info_line(ACCESS, message, fields)
    else:
        ACCESS.log(level, message, extra=fields)


class Exchange:
    """What the log line needs of a response as it passes (a small object, not a closure and
    its cells: a WebSocket keeps it for as long as it is open)."""

    __slots__ = ("_send", "close_code", "request_id", "status")

    def __init__(self, send: Send, request_id: str) -> None:
        self._send = send
        self.request_id = request_id
        self.status = 0
        self.close_code: int | None = None

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind in ("http.response.start", "websocket.accept"):
            message = self.started(message)
        elif kind == "websocket.close":
            self.close_code = message.get("code", 1000)
            self.status = self.status or 403  # closed before the handshake: a refusal
        await self._send(message)

    def started(self, message: Message) -> Message:
        """The response's (or the WebSocket's) start, noted, with the request id echoed."""
        self.status = message.get("status", 101)
        echo = (b"x-request-id", self.request_id.encode())
        return {**message, "headers": [*message.get("headers", ()), echo]}
