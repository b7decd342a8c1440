"""``GET /metrics``: Prometheus metrics of this replica and of the deployment (hub/metrics.py)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    description="This replica's counters (jobs it accepted, its streams and requests) and the "
    "deployment's state read from Redis now (queues, workers and their figures). "
    "The names are listed in docs/operations.md.",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
async def metrics(request: Request) -> Response:
    body = await request.app.state.metrics.render(request.app.state.service.catalogue)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
