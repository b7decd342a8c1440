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

from collections.abc import Awaitable

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contract.errors import TooLarge

REFUSED = "inferhub.body_too_large"  # the scope key of a body declared over the limit


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # a request without a body (a WebSocket, an event stream) goes on as it is, and no
        # frame of this middleware is kept while it runs
        if scope["type"] != "http":
            return self.app(scope, receive, send)
        length = chunked = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                chunked = value
        if length is None and chunked is None:
            return self.app(scope, receive, send)
        return self._limited(scope, receive, send, length, chunked)

    async def _limited(
        self, scope: Scope, receive: Receive, send: Send, length: bytes | None, chunked: object
    ) -> None:
        if length is not None and length.isdigit():
            if int(length) > self.max_bytes:
                scope[REFUSED] = self._error()
            elif chunked is None:  # HTTP's framing: no more body is read than the length said
                await self.app(scope, receive, send)
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise self._error()
            return message

        await self.app(scope, limited, send)

    def _error(self) -> TooLarge:
        return TooLarge(f"the request body is over {self.max_bytes} bytes; send fewer rows")


async def refuse_oversized(conn: HTTPConnection) -> None:
    """The app's first dependency: a body declared over the limit is refused at once."""
    error = conn.scope.get(REFUSED)
    if error is not None:
        raise error
