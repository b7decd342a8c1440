"""``POST /v1/tickets``: a key traded for a single-use ticket, for browsers' EventSource and
WebSocket, which cannot send an ``Authorization`` header."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from hub.auth import TICKET_TTL_S, issue_ticket
from hub.deps import CallerDep, ServiceDep
from hub.errors import error_responses

router = APIRouter(prefix="/v1", tags=["auth"], responses=error_responses(401, 503))


@router.post(
    "/tickets",
    summary="A single-use ticket for the streaming routes",
    description="Valid once, for a minute, as `?ticket=` on `/v1/ws` and the SSE routes, "
    "with the scopes of the key that asked for it.",
    responses={401: {"description": "No valid API key"}},
)
async def ticket(caller: CallerDep, service: ServiceDep) -> dict[str, Any]:
    return {
        "ticket": await issue_ticket(service.store.redis, caller),
        "expires_in": TICKET_TTL_S,
        "tenant": caller.tenant,
        "scopes": sorted(caller.scopes),
    }
