"""The one error hierarchy: every refusal the hub or the contract makes is an ``InferhubError``.

An error carries an HTTP status (its kind: the subclass), a machine ``code`` (which refusal of
that kind, stable for clients) and a ``message`` that says what to fix. Nothing here knows a
wire shape: each transport renders an error in one place (``hub/errors.py`` for ``/v1``,
``hub/v2/errors.py`` for Triton's ``{"error": ...}``, ``hub/api/ws.py`` for WebSocket frames
and close codes).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar


class InferhubError(Exception):
    status: ClassVar[int] = 400
    default_code: ClassVar[str] = "bad_request"

    def __init__(
        self, message: str, code: str | None = None, *, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.headers = dict(headers) if headers else None


class MalformedRequest(InferhubError):
    """The request cannot be read as the protocol's form: not JSON, wrong framing, an
    encoding or a cursor the hub does not know."""

    status = 400
    default_code = "malformed_request"


class Unauthorized(InferhubError):
    status = 401
    default_code = "unauthorized"


class Forbidden(InferhubError):
    status = 403
    default_code = "forbidden"


class NotFound(InferhubError):
    status = 404
    default_code = "not_found"


class MethodNotAllowed(InferhubError):
    status = 405
    default_code = "method_not_allowed"


class Conflict(InferhubError):
    """The request contradicts the state: a finished job, a reused idempotency key."""

    status = 409
    default_code = "conflict"


class TooLarge(InferhubError):
    status = 413
    default_code = "body_too_large"


class InvalidInput(InferhubError):
    """A well-formed request the model cannot take: a datatype, shape or value that is wrong."""

    status = 422
    default_code = "invalid_input"


class OverCapacity(InferhubError):
    """A bound is reached (queue, rate, streams, storage): retry later, or use less."""

    status = 429
    default_code = "over_capacity"


class InferenceFailed(InferhubError):
    status = 500
    default_code = "inference_failed"


class NotSupported(InferhubError):
    """A part of the protocol the hub does not serve (shared memory, say): not a fault of the
    request's form, and retrying will not help."""

    status = 501
    default_code = "not_supported"


class Unavailable(InferhubError):
    """The hub cannot serve it now: Redis unreachable, no worker, a deadline passed."""

    status = 503
    default_code = "unavailable"
