"""A V2 route without FastAPI's per-request machinery, for the hot path of ``/v2 .../infer``.

FastAPI solves every route's dependencies on each request (its parameters, the app's
``refuse_oversized``, the caller, the service...) and matches the routes ahead of it one regex
at a time: for a one-row inference that costs the hub more than the endpoint's own work. A
``LeanRoute`` is still an ``APIRoute`` (so /openapi.json documents it as before), but its
handler calls the endpoint as ``endpoint(request=request, **path_parameters)``: the endpoint
reads everything else from the request itself. Its
errors take Triton's shape, as every V2 route's; its successful requests are logged at
DEBUG (``request_log.HOT``). ``hub/middleware/shortcut.py`` sends the
requests of lean routes straight to ``asgi``, past FastAPI's routing.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from starlette.types import Receive, Scope, Send

from hub.middleware.body_limit import refuse_oversized
from hub.middleware.request_log import HOT
from hub.v2.errors import Handler, V2Route, in_triton_shape

LeanEndpoint = Callable[..., Coroutine[Any, Any, Response]]


class LeanRoute(V2Route):
    def get_route_handler(self) -> Handler:
        endpoint: LeanEndpoint = self.endpoint

        async def handle(request: Request) -> Response:
            request.scope[HOT] = True  # its successes are logged at DEBUG
            await refuse_oversized(request)  # the app's one dependency, as on every route
            return await endpoint(request=request, **request.path_params)

        return in_triton_shape(handle)

    def path_parameters(self, scope: Scope) -> dict[str, Any] | None:
        """The path's parameters if ``scope`` is a request for this route, else None."""
        if scope.get("method") not in (self.methods or ()) or scope.get("root_path"):
            return None  # behind a root path, FastAPI's routing knows how to strip it
        match = self.path_regex.match(scope["path"])
        if match is None:
            return None
        return {k: self.param_convertors[k].convert(v) for k, v in match.groupdict().items()}

    def shortcut(self) -> Callable[[Scope, Receive, Send], Coroutine[Any, Any, None]]:
        """The route as a bare ASGI app, for a scope whose ``path_params`` are set."""
        handler = self.get_route_handler()

        async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
            response = await handler(Request(scope, receive, send))
            await response(scope, receive, send)

        return asgi
