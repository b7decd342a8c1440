"""``GET /metrics``: Prometheus metrics of this replica and of the deployment (hub/metrics/).

They tell every tenant's activity (queues, workers, models), so a keyed hub shows them to an
``admin`` key or to ``INFERHUB_METRICS_TOKEN``, the bearer token a Prometheus scrape sends.
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from hub.deps import authenticate
from hub.errors import error_responses
from hub.metrics import cluster

router = APIRouter(tags=["health"])


async def _may_scrape(request: Request) -> None:
    token = request.app.state.settings.metrics_token
    scheme, _, sent = request.headers.get("authorization", "").partition(" ")
    if (
        token is not None
        and scheme.lower() == "bearer"
        and hmac.compare_digest(sent.strip().encode(), token.get_secret_value().encode())
    ):
        return
    why = "/metrics shows every tenant's activity; Prometheus may send INFERHUB_METRICS_TOKEN"
    (await authenticate(request)).need("admin", why)  # an open hub's caller is admin


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    description="This replica's counters (jobs it accepted, its streams and requests) and the "
    "deployment's state read from Redis now (queues, workers and their figures). "
    "The names are listed in docs/operations.md. With API keys: an admin key, or "
    "INFERHUB_METRICS_TOKEN as a bearer token.",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}, **error_responses(401, 403)},
)
async def metrics(request: Request) -> Response:
    await _may_scrape(request)
    snapshot = await cluster.read(request.app.state.service.catalogue)
    body = request.app.state.metrics.render(snapshot)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
