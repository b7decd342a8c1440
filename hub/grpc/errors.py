"""The one place where an ``InferhubError`` (contract/errors.py) becomes a gRPC status.

The codes are Triton's: what Triton answers 400 over HTTP is ``INVALID_ARGUMENT`` over gRPC,
404 ``NOT_FOUND``, 503 ``UNAVAILABLE``. Our statuses that Triton has no word for map as the
V2 routes render them (422 and 409 are Triton's 400, a bound reached, 429, is its 503), and
the rest by gRPC's own table of HTTP statuses. A ``Retry-After`` travels as trailing metadata.
"""

from __future__ import annotations

import logging
from typing import Any, NoReturn

import grpc
from redis.exceptions import RedisError

from contract.errors import InferenceFailed, InferhubError
from hub.errors import store_unreachable

log = logging.getLogger(__name__)

CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    409: grpc.StatusCode.INVALID_ARGUMENT,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.UNAVAILABLE,
    499: grpc.StatusCode.CANCELLED,
    500: grpc.StatusCode.INTERNAL,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
}


def code_of(exc: InferhubError) -> grpc.StatusCode:
    return CODES.get(exc.status, grpc.StatusCode.UNKNOWN)


def as_error(exc: Exception) -> InferhubError:
    """Any exception a handler let out, as the hierarchy's error: Redis down is 503; anything
    else is a bug, logged with its traceback and answered INTERNAL without its details."""
    if isinstance(exc, InferhubError):
        return exc
    if isinstance(exc, RedisError):
        return store_unreachable()
    log.error("gRPC handler failed", exc_info=exc)
    return InferenceFailed("internal error in the hub; see its log", "internal")


def trailers(exc: InferhubError) -> tuple[tuple[str, str], ...]:
    retry = (exc.headers or {}).get("Retry-After")
    return (("retry-after", retry),) if retry else ()


async def abort(context: Any, exc: Exception) -> NoReturn:
    """End the call (a ``grpc.aio.ServicerContext``'s) with the error's status and message."""
    error = as_error(exc)
    await context.abort(code_of(error), error.message, trailing_metadata=trailers(error))
    raise AssertionError("grpc's abort raises")  # never reached: abort ends the handler
