"""The hot routes' one layer: what the four middlewares do for them, done once, then the route.

``POST /v2 ... /infer`` and a JSON ``POST /v1/jobs`` come thousands a second. Through the usual
chain each passes four ASGI layers (the request log, the host check, the drain, the body limit),
each a coroutine frame, a scan of the headers and, for two of them, a wrapper around every
``send`` or ``receive``: a quarter of the hub's CPU for a one-row inference. ``HotPath`` sits
outermost and, for a request of one of its routes, does their work in one frame with one scan
of the headers and one ``send`` wrapper:

- the request id (taken or made), echoed in ``X-Request-ID``, bound to the log context, and the
  access line and HTTP metrics when it ends (``request_log.RequestLog.ended``);
- the ``Host`` check (``hub/hosts.py``): 400 for a name not allowed;
- the drain (``drain.py``): 503 once the shutdown began, and a 503 that says so for a request
  the shutdown's grace cut short; such requests are never live streams, so the drain's
  registry has nothing to wait for;
- the body limit (``body_limit.py``): a body declared too large is refused by the route, one
  that grows too large raises from ``receive``.

Under uvicorn, a whole response (one with a ``content-length``, its body in one message) leaves
in one write to the socket, not uvicorn's two (``hub/wire.py``, ``send_whole``): one TCP segment
and one wake-up of the client, not two.

It wraps FastAPI's whole stack (``hub/app.py`` sets it as the app's ``middleware_stack``), so
that the hot routes skip FastAPI's own outer layers too (its error, exception telemetry and
body-limit wrappers: ~8% of the hub's CPU for a one-row inference, a frame each and a wrapper
around ``send``); an error no route answered gets the 500 FastAPI's error layer would send.
Then it calls the route straight (``shortcut.ShortRoute``), past FastAPI's routing. Every other
request takes the usual chain, as does any request while tracing is on (FastAPI names its span
after the route) and, when CORS is on, any request with an ``Origin`` (the CORS middleware
answers those).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from contract.logs import bound
from hub.hosts import AllowedHosts
from hub.middleware.body_limit import BodyLimit
from hub.middleware.drain import Streams, refuse
from hub.middleware.request_log import Exchange, RequestLog, RequestObserver, request_id
from hub.middleware.shortcut import TELEMETRY, ShortRoute
from hub.wire import response_cycle, send_whole

RouteApp = Callable[[Scope, Receive, Send], Coroutine[Any, Any, None]]

_INTERNAL_ERROR = PlainTextResponse("Internal Server Error", status_code=500)


class HotPath:
    def __init__(
        self,
        app: ASGIApp,
        *,
        routes: Sequence[ShortRoute],
        observe: RequestObserver,
        allowed_hosts: list[str],
        keyless: bool,
        streams: Streams,
        max_body_bytes: int,
        cors: bool,
    ) -> None:
        """The same settings as the four middlewares of the usual chain get (``hub/app.py``),
        whose code it calls: one behaviour, whichever way a request takes."""
        self.app = app
        self.routes = [(route, route.shortcut()) for route in routes]
        self.log = RequestLog(app, observe)
        self.hosts = AllowedHosts(app, allowed=allowed_hosts, keyless=keyless)
        self.streams = streams
        self.body = BodyLimit(app, max_body_bytes)
        self.cors = cors

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # a plain function: no frame of it is kept for the requests that go on to the chain
        if scope["type"] == "http" and scope.get(TELEMETRY) is None:
            for route, asgi in self.routes:
                parameters = route.path_parameters(scope)
                if parameters is not None:
                    return self._serve(route, parameters, asgi, scope, receive, send)
        return self.app(scope, receive, send)

    async def _serve(
        self,
        route: ShortRoute,
        parameters: dict[str, Any],
        asgi: RouteApp,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        host: bytes | None = None
        given = traceparent = b""
        length: bytes | None = None
        chunked: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"host" and host is None:  # the first, as starlette's Headers reads it
                host = value
            elif name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                chunked = value
            elif name == b"x-request-id":
                given = value
            elif name == b"traceparent":
                traceparent = value
            elif name == b"origin" and self.cors:
                await self.app(scope, receive, send)
                return
        cycle = response_cycle(send)
        rid = request_id(given, traceparent)
        exchange = Exchange(send, rid) if cycle is None else _WholeExchange(send, rid, cycle)
        start = time.perf_counter()
        with bound(request_id=exchange.request_id) as context:
            try:
                header = host.decode("latin-1") if host is not None else ""
                if not self.hosts.admits(header):
                    await self.hosts.refuse(header, scope, receive, exchange.send)
                elif self.streams.closing:
                    await refuse("http", exchange.send, scope)
                else:
                    scope["route"] = route  # as FastAPI's routing sets it (the metrics read it)
                    scope["path_params"] = parameters
                    bounded = self.body.bounded(scope, receive, length, chunked)
                    await asgi(scope, bounded, exchange.send)
            except asyncio.CancelledError:
                # the shutdown's grace is spent and uvicorn cancels what still runs: a request
                # with no answer yet gets a 503 that says so, not uvicorn's bare 500
                if not self.streams.closing or exchange.status:
                    exchange.status = exchange.status or 500
                    raise
                await refuse("http", exchange.send, scope, cut=True)
            except Exception:
                if not exchange.status:  # as FastAPI's error layer answers, then logs it
                    await _INTERNAL_ERROR(scope, receive, exchange.send)
                exchange.status = exchange.status or 500
                raise
            except BaseException:
                exchange.status = exchange.status or 500
                raise
            finally:
                self.log.ended(scope, exchange, time.perf_counter() - start, context)


class _WholeExchange(Exchange):
    """The exchange of a request served by uvicorn: the start of a response that declares its
    length is held until its body comes, and both leave in one write (``send_whole``)."""

    __slots__ = ("_cycle", "_start")

    def __init__(self, send: Send, request_id: str, cycle: RequestResponseCycle) -> None:
        super().__init__(send, request_id)
        self._cycle = cycle
        self._start: Message | None = None

    async def send(self, message: Message) -> None:
        start = self._start
        if start is not None:
            self._start = None
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                await send_whole(self._cycle, start, message)
                return
            await self._send(start)  # a body in parts: its start goes first, as it came
        elif message["type"] == "http.response.start":
            message = self.started(message)
            if any(name == b"content-length" for name, _ in message["headers"]):
                self._start = message  # its body is on its way (a stream's might be late)
                return
        await self._send(message)
