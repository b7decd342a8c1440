"""Triton's error shape for the V2 routes, ``{"error": "message"}``, rendered in this one place.

Every route of the V2 router is a ``V2Route``: whatever ``InferhubError`` its dependencies or
endpoint raise (a body over the limit included: the body-limit middleware raises it from
``receive``) is answered here, so that ``/v1`` keeps its own shape from the app's handlers.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from redis.exceptions import RedisError

from contract.errors import InferhubError
from hub.errors import store_unreachable
from hub.responses import JSON

# The hierarchy's statuses as Triton answers them: a request it finds invalid (422) or
# conflicting (409) is Triton's 400; over capacity (429) is its 503.
_STATUS = {422: 400, 409: 400, 429: 503}

SCHEMA = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}


def status_of(exc: InferhubError) -> int:
    """The HTTP status a V2 client gets for the error."""
    return _STATUS.get(exc.status, exc.status)


def render(exc: InferhubError) -> JSON:
    return JSON({"error": exc.message}, status_code=status_of(exc), headers=exc.headers)


Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def in_triton_shape(handler: Handler) -> Handler:
    """The handler, its errors answered in Triton's shape."""

    async def handle(request: Request) -> Response:
        try:
            return await handler(request)
        except InferhubError as exc:
            return render(exc)
        except RedisError:
            return render(store_unreachable())

    return handle


class V2Route(APIRoute):
    """A route whose errors take Triton's shape."""

    def get_route_handler(self) -> Handler:
        return in_triton_shape(super().get_route_handler())
