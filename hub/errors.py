"""``/v1``'s error shape, ``{"error": {"code": "...", "message": "..."}}``, rendered in this one
place: the app's handlers turn every ``InferhubError`` (contract/errors.py) and every error of
FastAPI, Starlette and Redis into it. The V2 routes render their own (hub/v2/errors.py).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException

from contract.errors import InferhubError, Unavailable
from hub.responses import JSON

log = logging.getLogger(__name__)


_ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            "required": ["code", "message"],
        }
    },
    "required": ["error"],
}


def error_responses(*statuses: int, schema: dict[str, Any] = _ERROR_SCHEMA) -> dict[int | str, Any]:
    """OpenAPI entries for the errors a router may answer, all in one JSON shape."""
    return {
        status: {
            "description": _DESCRIPTIONS[status],
            "content": {"application/json": {"schema": schema}},
        }
        for status in statuses
    }


_DESCRIPTIONS = {
    400: "Malformed request",
    401: "No valid API key",
    403: "The key lacks the scope",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Body too large",
    422: "Invalid input",
    429: "Over capacity or over the rate limit (see Retry-After)",
    499: "The client went away",
    500: "The model failed",
    503: "Redis unreachable or no live worker",
}


def store_unreachable() -> Unavailable:
    """What a ``RedisError`` means to a client, on every transport."""
    return Unavailable(
        "the job store is unreachable; retry shortly",
        "redis_unavailable",
        headers={"Retry-After": "1"},
    )


def render(exc: InferhubError) -> JSON:
    return error_response(exc.status, exc.code, exc.message, exc.headers)


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSON:
    body = {"error": {"code": code, "message": message}}
    return JSON(body, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> tuple[int, str, str]:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        detail = next(e for e in errors if e.get("type") == "json_invalid")
        reason = (detail.get("ctx") or {}).get("error", "")
        return 400, "malformed_json", f"the body is not valid JSON: {reason}".rstrip(": ")
    parts = []
    for e in errors[:5]:
        where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    return 422, "invalid_request", "; ".join(parts)


def v1_error(exc: InferhubError | RequestValidationError | RedisError) -> JSON:
    """The answer of a ``/v1`` route to one of these errors (the app's handlers, and a route
    that renders its own: ``hub/api/jobs.py``)."""
    if isinstance(exc, InferhubError):
        return render(exc)
    if isinstance(exc, RequestValidationError):
        return error_response(*_validation_message(exc))
    log.warning("redis unavailable: %s", exc)
    return render(store_unreachable())


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(InferhubError)
    async def inferhub_error(_: Request, exc: InferhubError) -> JSON:
        return v1_error(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSON:
        return v1_error(exc)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSON:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        headers = dict(exc.headers) if exc.headers else None
        return error_response(exc.status_code, code, str(exc.detail), headers)

    @app.exception_handler(RedisError)
    async def redis_down(_: Request, exc: RedisError) -> JSON:
        return v1_error(exc)
