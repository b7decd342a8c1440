"""ASGI middleware: requests of the hot routes go straight to them, past FastAPI's routing.

FastAPI matches a request against every route ahead of the right one (a regex each, through
its included routers) and wraps the route in its exception and exit-stack layers: for a
one-row ``/v2 ... /infer`` that is a quarter of the hub's CPU. The routes given here (lean
routes, ``hub/v2/lean.py``, which render their own errors; and the long-lived streams, whose
per-request machinery would be kept for as long as they are open) are matched first and called
directly; every other request goes on to the app (as every request does while tracing is on).
It sits innermost, so the request log, the host check, the drain and the body limit see every
request that gets here; the HTTP hot routes mostly do not: ``hot_path.py`` serves them ahead
of the chain, doing those four layers' work itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Protocol

from starlette.types import ASGIApp, Receive, Scope, Send


class ShortRoute(Protocol):
    """A route that can be called past the routing (``hub/v2/lean.py``, ``hub/api/jobs.py``,
    ``hub/api/ws.py``, ``hub/api/events.py``)."""

    def path_parameters(self, scope: Scope) -> dict[str, Any] | None: ...

    def shortcut(self) -> Callable[[Scope, Receive, Send], Coroutine[Any, Any, None]]: ...


TELEMETRY = "fastapi.telemetry"  # the scope key of FastAPI's request span, when tracing is on


class Shortcut:
    def __init__(self, app: ASGIApp, routes: Sequence[ShortRoute]) -> None:
        self.app = app
        self.routes = [(route, route.shortcut()) for route in routes]

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # a plain function: no frame of it is kept while a long-lived stream runs
        # with tracing on, FastAPI's routing names the request's span after its route: such a
        # request takes the usual way (the lean route still skips the dependency solving)
        if scope["type"] in ("http", "websocket") and scope.get(TELEMETRY) is None:
            for route, asgi in self.routes:
                parameters = route.path_parameters(scope)
                if parameters is not None:
                    scope["route"] = route  # as FastAPI's routing sets it (the metrics read it)
                    scope["path_params"] = parameters
                    return asgi(scope, receive, send)
        return self.app(scope, receive, send)
