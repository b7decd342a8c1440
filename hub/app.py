"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline
from redis.asyncio import Redis

from contract import keys
from contract.connection import connect
from contract.jobstore import JobStore, Limits
from contract.settings import Settings
from hub.api import dashboard, events, health, jobs, models, tickets, ws
from hub.api.jobs import SubmitRoute
from hub.api.metrics import router as metrics_router
from hub.auth import KeyRing
from hub.catalogue import Catalogue
from hub.errors import install_handlers
from hub.fanout import Fanout
from hub.grpc.server import GrpcServer
from hub.hosts import AllowedHosts
from hub.metrics.registry import Metrics
from hub.metrics.stats import StatsFeed
from hub.middleware.body_limit import BodyLimit, refuse_oversized
from hub.middleware.drain import Drain, Streams
from hub.middleware.hot_path import HotPath
from hub.middleware.request_log import RequestLog
from hub.middleware.shortcut import Shortcut, ShortRoute
from hub.online import OnlineLane
from hub.ratelimit import RateLimiter
from hub.responses import JSON
from hub.service import JobService
from hub.tracing import start as start_tracing
from hub.v2 import openapi as v2_openapi
from hub.v2.lean import LeanRoute
from hub.v2.repository import router as v2_repository_router
from hub.v2.routes import router as v2_router
from hub.v2.stats import router as v2_stats_router
from hub.webhooks.policy import WebhookPolicy
from hub.webhooks.sender import Backoff, WebhookSender

DESCRIPTION = """A real-time inference hub: submit rows to an ONNX model, get the result inline,
follow it live, or fetch it later. Every error is `{"error": {"code", "message"}}`."""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    streams = Streams()  # open SSE streams and WebSockets, drained at shutdown
    metrics = Metrics(streams.open)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis = connect(settings.redis_url)
        fanout = Fanout(
            settings.redis_url,
            observer=metrics,
            maxsize=settings.subscriber_buffer,
            max_bytes=settings.subscriber_buffer_bytes,
            stuck_after_s=settings.slow_consumer_s,
        )
        online = OnlineLane(redis, max_rows_per_pool=settings.online_max_rows, observer=metrics)
        fanout.listen(online.reply_channel, online.on_reply, online.on_gap)
        store = JobStore(redis, Limits.of(settings))
        sender = _webhook_sender(settings, redis, store, webhooks)
        if sender is not None:
            fanout.listen_pools(keys.webhooks_wake, sender.wake)
        await fanout.start()
        metrics.fanout = fanout
        rate = (
            RateLimiter(redis, settings.rate_limit_per_s, settings.rate_burst)
            if settings.rate_limit_per_s
            else None
        )
        catalogue = Catalogue(redis, model_ttl_s=settings.job_ttl_s)
        app.state.service = JobService(
            store,
            catalogue,
            fanout,
            online,
            max_queued=settings.max_queued,
            max_queued_per_tenant=settings.max_queued_per_tenant,
            max_stored_per_tenant=settings.max_stored_bytes_per_tenant,
            max_streams_per_tenant=settings.max_streams_per_tenant,
            rate=rate,
            observer=metrics,
            webhooks=webhooks,
        )
        app.state.stats = stats = StatsFeed(
            catalogue, settings.stats_interval_s, metrics.online_totals
        )
        stats.start()
        grpc_server = (
            GrpcServer(app.state.service, app.state.keyring, settings, app.version)
            if settings.grpc_port
            else None
        )
        if sender is not None:
            sender.start()
        try:
            if grpc_server is not None:
                await grpc_server.start()
            yield
        finally:
            if grpc_server is not None:
                await grpc_server.stop()
            if sender is not None:
                await sender.stop()
            await stats.stop()
            await online.close()
            await fanout.stop()
            await redis.aclose()

    # /docs and /redoc with Swagger UI and ReDoc from the package's own copy
    # (/static-offline-docs/), not a CDN: the API docs work offline and behind firewalls
    app = FastAPIOffline(
        title="inferhub",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        default_response_class=JSON,
        dependencies=[Depends(refuse_oversized)],
        telemetry=start_tracing(),  # a span per request when OTEL_EXPORTER_OTLP_ENDPOINT is set
    )
    app.state.settings = settings
    app.state.streams = streams
    app.state.metrics = metrics
    app.state.keyring = KeyRing.load(settings.api_keys_file)
    webhooks = WebhookPolicy.of(settings, app.state.keyring)
    install_handlers(app)
    app.include_router(jobs.router)
    app.include_router(events.router)
    app.include_router(models.router)
    app.include_router(ws.router)
    app.include_router(health.router)
    # before v2_router, whose /v2/models/{model} and /v2/{path} would take their paths
    app.include_router(v2_stats_router)
    app.include_router(v2_repository_router)
    app.include_router(v2_router)
    v2_openapi.install(app)  # the V2 infer request's schema, read by the route itself
    app.include_router(tickets.router)
    app.include_router(dashboard.router)
    app.include_router(metrics_router)
    # innermost: the hot routes (V2 infer, submit) and the streams, whose per-request machinery
    # would be kept as long as they are open, go straight to their endpoint, past the routing
    hot: list[ShortRoute] = [
        r
        for r in (*v2_router.routes, *jobs.router.routes)
        if isinstance(r, LeanRoute | SubmitRoute)
    ]
    streamed: list[ShortRoute] = [
        r for r in events.router.routes if isinstance(r, events.StreamRoute)
    ]
    app.add_middleware(Shortcut, routes=[*hot, *streamed, *ws.direct_routes()])
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    if settings.allowed_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.allowed_origins,
            allow_methods=["GET", "POST"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "Idempotency-Key",
                "Last-Event-ID",
                "Prefer",
                "Inference-Header-Content-Length",
                "Content-Encoding",
            ],
            expose_headers=["Location", "Retry-After", "Inference-Header-Content-Length"],
        )
    app.add_middleware(Drain, streams=streams)
    app.add_middleware(AllowedHosts, allowed=settings.allowed_hosts, keyless=app.state.keyring.open)
    app.add_middleware(RequestLog, observe=metrics.request)  # sees every other request
    # outermost, FastAPI's own layers included: the hot routes get what the four layers above
    # do, in one (and Shortcut's way in when a request of theirs takes the chain: tracing on,
    # or CORS)
    app.middleware_stack = HotPath(
        app.build_middleware_stack(),
        routes=hot,
        observe=metrics.request,
        allowed_hosts=settings.allowed_hosts,
        keyless=app.state.keyring.open,
        streams=streams,
        max_body_bytes=settings.max_body_bytes,
        cors=bool(settings.allowed_origins),
    )
    return app


def _webhook_sender(
    settings: Settings, redis: Redis, store: JobStore, policy: WebhookPolicy
) -> WebhookSender | None:
    """The hub's webhook sender; none on a hub that holds no secret to sign with."""
    if not policy.signs:
        return None
    return WebhookSender(
        redis,
        store,
        policy,
        timeout_s=settings.webhook_timeout_s,
        backoff=Backoff(settings.webhook_backoff_s, settings.webhook_backoff_max_s),
        concurrency=settings.webhook_concurrency,
    )
