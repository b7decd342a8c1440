"""Request bodies bounded at ``max_bytes``, refused with 413 in the shape of the route's transport.

The middleware answers nothing itself, so it never needs to know which transport a request is
for. A body that declares itself too large (``Content-Length``) is recorded in the scope, and
``refuse_oversized``, a dependency of every route, raises it before anything else runs
(authentication included), so that nothing of the body is read. A body that grows too large as
it streams (one sent without a ``Content-Length``) raises ``TooLarge`` from ``receive`` where
the route reads it. Either way the error
is raised inside the route, and its transport renders it (the app's handlers for ``/v1``, the
V2 route class for ``/v2``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contract.errors import TooLarge

REFUSED = "inferhub.body_too_large"  # the scope key of a body declared over the limit


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # a plain function: no frame of it is kept while a request (or a stream) runs
        if scope["type"] != "http":
            return self.app(scope, receive, send)
        length = chunked = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                chunked = value
        return self.app(scope, self.bounded(scope, receive, length, chunked), send)

    def bounded(
        self, scope: Scope, receive: Receive, length: bytes | None, chunked: bytes | None
    ) -> Receive:
        """``receive`` for a request with these ``Content-Length`` and ``Transfer-Encoding``
        headers (None: absent), or one that raises TooLarge once the body grows past the limit;
        a body declared over the limit is recorded in the scope (``hub/middleware/hot_path.py``
        calls it too)."""
        if length is None and chunked is None:
            return receive  # no body
        if length is not None and length.isdigit():
            if int(length) > self.max_bytes:
                scope[REFUSED] = self._error()
            elif chunked is None:  # HTTP's framing: no more body is read than the length said
                return receive
        return _Counted(receive, self.max_bytes, self._error).receive

    def _error(self) -> TooLarge:
        return TooLarge(f"the request body is over {self.max_bytes} bytes; send fewer rows")


class _Counted:
    """A ``receive`` that counts the body's bytes and raises past ``max_bytes``."""

    __slots__ = ("_error", "_receive", "max_bytes", "seen")

    def __init__(self, receive: Receive, max_bytes: int, error: Callable[[], TooLarge]) -> None:
        self._receive = receive
        self._error = error
        self.max_bytes = max_bytes
        self.seen = 0

    async def receive(self) -> Message:
        message = await self._receive()
        self.seen += len(message.get("body", b""))
        if self.seen > self.max_bytes:
            raise self._error()
        return message


async def refuse_oversized(conn: HTTPConnection) -> None:
    """The app's first dependency: a body declared over the limit is refused at once."""
    error = conn.scope.get(REFUSED)
    if error is not None:
        raise error
