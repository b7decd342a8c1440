"""Errors that carry their HTTP status, and the handlers that give every error one JSON shape:
``{"error": {"code": "...", "message": "..."}}``.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException

from hub.responses import JSON

log = logging.getLogger(__name__)


class HubError(Exception):
    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


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


def not_found(what: str, name: str) -> HubError:
    return HubError(404, f"{what}_not_found", f"{what} '{name}' does not exist")


def invalid_input(message: str) -> HubError:
    return HubError(422, "invalid_input", message)


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


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(HubError)
    async def hub_error(_: Request, exc: HubError) -> JSON:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSON:
        return error_response(*_validation_message(exc))

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSON:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        headers = dict(exc.headers) if exc.headers else None
        return error_response(exc.status_code, code, str(exc.detail), headers)

    @app.exception_handler(RedisError)
    async def redis_down(_: Request, exc: RedisError) -> JSON:
        log.warning("redis unavailable: %s", exc)
        return error_response(
            503,
            "redis_unavailable",
            "the job store is unreachable; retry shortly",
            {"Retry-After": "1"},
        )
