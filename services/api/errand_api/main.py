"""The FastAPI application: ``create_app(settings)``."""

import gc
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import dramatiq
from anyio.to_thread import current_default_thread_limiter
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.routing import APIRoute
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.trace.export import SpanExporter
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from sqlalchemy import Engine
from sqlmodel import Session
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from errand_api import dashboard, metrics
from errand_api.authcache import AuthCache
from errand_api.catalog import Catalog
from errand_api.deps import RedisPing, Services
from errand_api.errors import PayloadTooLarge
from errand_api.fastpath import PATH as PLAIN_PATH
from errand_api.fastpath import PlainSubmission
from errand_api.grouped import SubmissionGroups
from errand_api.openapi import install_openapi
from errand_api.problems import install_problem_handlers, problem
from errand_api.publisher import Publisher, build_broker
from errand_api.ratelimit import TokenBucket
from errand_api.routes import (
    admin,
    export,
    failures,
    flow_admin,
    health,
    holds,
    job_actions,
    jobs,
    keys,
    stats,
    workflows,
)
from errand_api.routes import metrics as metrics_route
from errand_api.routes import schedules as schedules_route
from errand_api.settings import ApiSettings, get_settings
from errand_api.submission import SubmissionRules
from errand_schema.auth import ensure_bootstrap_admin
from errand_schema.db import create_db_engine, warn_about_server
from errand_schema.estimates import Estimator
from errand_schema.events import SharedEventPublisher
from errand_schema.jwt_auth import JwtVerifier
from errand_schema.logging import configure_logging, flush_logs_on_sigterm, log_context
from errand_schema.masking import configure_masking
from errand_schema.redis_guard import guarded_redis
from errand_schema.telemetry import configure_tracing, instrument_clients

logger = logging.getLogger(__name__)

#: Description shown at the top of ``/docs``.
API_DESCRIPTION = """
Errand accepts long-running jobs, answers with an id in milliseconds, and reports
their progress live. Authenticate with `Authorization: Bearer <API key>`.
Errors are RFC 9457 `application/problem+json`.
"""


def create_app(
    settings: ApiSettings,
    *,
    engine: Engine | None = None,
    broker: dramatiq.Broker | None = None,
    redis: Redis | None = None,
    async_redis: Any = None,
    span_exporter: SpanExporter | None = None,
) -> FastAPI:
    """Build the API application.

    Args:
        settings: The API settings.
        engine: A database engine (built from settings when omitted).
        broker: A Dramatiq broker (RabbitMQ from settings when omitted; ``errand dev``
            passes its in-memory broker).
        redis: A Redis client (from settings when omitted; ``errand dev`` passes its
            in-process stand-in).
        async_redis: An asyncio client of the same Redis, for the auth cache's epoch
            (from settings when ``redis`` is omitted too; without one, no auth cache).
    """
    configure_masking(settings.masked_fields)
    engine = engine or create_db_engine(settings.database_url, pool_size=settings.db_pool_size)
    if redis is None:
        # A Redis that stops answering holds a call this long at most (redis-py's
        # default is 5 s), and then is left alone for a moment (errand_schema.redis_guard).
        limit = settings.redis_timeout_s
        redis, _ = guarded_redis(settings.redis_url, timeout_s=limit)
        async_redis = async_redis or AsyncRedis.from_url(
            settings.redis_url, socket_timeout=limit, socket_connect_timeout=limit
        )
    broker = broker or build_broker(settings.rabbitmq_url)
    services = Services(
        engine=engine,
        broker=broker,
        publisher=Publisher(broker),
        events=SharedEventPublisher(redis, settings.redis_prefix, settings.event_stream_maxlen),
        catalog=Catalog(settings.job_type_cache_s),
        redis_ping=RedisPing(redis),
        limiter=TokenBucket(redis, settings.redis_prefix, fail_open=settings.rate_limit_fail_open),
        rules=SubmissionRules(
            max_payload_bytes=settings.max_payload_bytes,
            allow_private_urls=settings.allow_private_urls,
            allowed_url_hosts=frozenset(settings.allowed_url_hosts),
        ),
        settings=settings,
        jwt=JwtVerifier(jwt_config) if (jwt_config := settings.jwt_config()) else None,
        redis=redis,
        estimator=Estimator(redis, settings.redis_prefix),
        auth_cache=(
            AuthCache(async_redis, settings.redis_prefix, settings.auth_cache_s)
            if async_redis is not None and settings.auth_cache_s > 0
            else None
        ),
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Sync routes and dependencies run on AnyIO's thread pool of this event loop.
        current_default_thread_limiter().total_tokens = settings.request_threads
        await run_in_threadpool(warn_about_server, engine, logger)
        if settings.bootstrap_admin_key is not None:
            with Session(engine) as session:
                ensure_bootstrap_admin(session, settings.bootstrap_admin_key.get_secret_value())
        # What is built by now (the app, its routes and models, the clients) lives as
        # long as the process: moved out of the collector's sight, its full collections
        # under load walk only what requests made. They had walked it all, a pause
        # that was the POSTs' p99 (182 -> 85 ms at ~850 req/s, bench/HISTORY.md).
        gc.collect()
        gc.freeze()
        yield
        if services.groups is not None:
            services.groups.close()  # answer what is queued
        services.events.close()  # anything a slow write left pending

    app = FastAPI(
        title="Errand API",
        version="1.0.0",
        description=API_DESCRIPTION,
        lifespan=lifespan,
    )
    if (
        settings.submit_group_max > 0
        and isinstance(broker, RabbitmqBroker)
        and engine.dialect.name == "postgresql"
    ):
        services.groups = SubmissionGroups(
            services, threads=settings.submit_group_threads, max_group=settings.submit_group_max
        )
    app.state.services = services
    if configure_tracing(
        "errand-api",
        endpoint=settings.otel_exporter_otlp_endpoint,
        protocol=settings.otel_exporter_otlp_protocol,
        exporter=span_exporter,
    ):
        FastAPIInstrumentor.instrument_app(app, excluded_urls="healthz,readyz,metrics")
        instrument_clients(engine)
    install_problem_handlers(app)
    install_openapi(app)
    _install_request_middleware(app, settings.max_body_bytes)
    app.include_router(health.router)
    app.include_router(metrics_route.router)
    app.include_router(dashboard.router)
    metrics.register_queue_collector(engine, redis, settings.redis_prefix)
    app.include_router(export.router)
    app.include_router(jobs.router)
    app.include_router(job_actions.router)
    app.include_router(holds.router)
    app.include_router(failures.router)
    app.include_router(stats.router)
    app.include_router(keys.router)
    app.include_router(admin.router)
    app.include_router(flow_admin.router)
    app.include_router(workflows.router)
    app.include_router(schedules_route.router)
    return app


def _install_request_middleware(app: FastAPI, max_body_bytes: int) -> None:
    # The last added runs first: the plain submission's path runs inside RequestContext.
    app.add_middleware(PlainSubmission, route=_submit_route())
    app.add_middleware(RequestContext, max_body_bytes=max_body_bytes)


def _submit_route() -> APIRoute:
    """The FastAPI route of ``POST /v1/jobs`` (the plain path names it in the scope)."""
    return next(
        r
        for r in jobs.router.routes
        if isinstance(r, APIRoute) and r.path == PLAIN_PATH and "POST" in (r.methods or ())
    )


class RequestContext:
    """Request id, body size limit, log context and HTTP metrics of every request.

    Plain ASGI: Starlette's ``BaseHTTPMiddleware`` (``@app.middleware("http")``) runs
    each request through an extra task, a task group and memory streams, which was a
    tenth of the API's CPU per request under load.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection scope."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        request_id = headers.get("x-request-id") or str(uuid.uuid4())
        scope.setdefault("state", {})["request_id"] = request_id
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            err = PayloadTooLarge(f"The body is larger than {self.max_body_bytes} bytes.")
            response = problem(Request(scope), err.status_code, err.code, err.title, err.detail)
            await response(scope, receive, send)
            return
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
            await send(message)

        token = log_context.set({"request_id": request_id})
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            log_context.reset(token)
            path = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"]
            metrics.HTTP_SECONDS.labels(method, path).observe(time.perf_counter() - started)
            metrics.HTTP_REQUESTS.labels(method, path, str(status)).inc()


def serve() -> None:
    """Run the API under uvicorn with settings from the environment."""
    import uvicorn  # local: only the process entry point needs the server

    settings = get_settings()
    configure_logging(
        settings.log_level,
        json_lines=settings.log_json,
        flush_interval_s=settings.log_flush_interval_s,
    )
    flush_logs_on_sigterm()  # uvicorn's shutdown lines are written before it exits
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
    )
