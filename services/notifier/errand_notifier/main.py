"""The notifier's ASGI app: Socket.IO plus ``/healthz``, ``/readyz`` and ``/metrics``."""

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import socketio
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.asyncio import Redis
from sqlalchemy import Engine, text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from errand_notifier.hub import Hub, hub_of
from errand_notifier.server import create_server, run_relay
from errand_notifier.settings import NotifierSettings, get_settings
from errand_notifier.store import Store
from errand_schema.db import create_db_engine
from errand_schema.health import readiness
from errand_schema.logging import configure_logging, flush_logs_on_sigterm


def create_app(
    settings: NotifierSettings, *, engine: Engine | None = None, redis: Any = None
) -> socketio.ASGIApp:
    """Build the notifier: Socket.IO at ``/socket.io`` and health probes beside it."""
    engine = engine or create_db_engine(settings.database_url)
    if redis is None:
        redis = Redis.from_url(
            settings.redis_url,
            socket_timeout=settings.redis_timeout_s + settings.stream_block_ms / 1000,
            socket_connect_timeout=settings.redis_timeout_s,
        )
    sio = create_server(settings, engine)
    hub = hub_of(sio)

    async def healthz(_request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> JSONResponse:
        # ?require=database: only that check (errand_schema.health.REQUIRE_HELP); the
        # notifier serves its clients from PostgreSQL while Redis is away.
        names = dict.fromkeys(request.query_params.getlist("require") or ("database", "redis"))
        if any(name not in ("database", "redis") for name in names):
            return JSONResponse({"detail": "require: database or redis"}, status_code=422)
        checks = {}
        if "database" in names:
            checks["database"] = _db_ok(engine)
        if "redis" in names:
            checks["redis"] = await _redis_ok(redis)
        body, code = readiness(checks, draining=hub.draining)
        body["connections"] = hub.fanout.client_count()
        return JSONResponse(body, status_code=code)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        if settings.bootstrap_admin_key is not None:
            Store(engine).ensure_bootstrap_admin(settings.bootstrap_admin_key.get_secret_value())
        async with run_relay(sio, redis, settings):
            yield

    async def metrics_endpoint(_request: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    health = Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics_endpoint),
        ],
        lifespan=lifespan,
    )
    return socketio.ASGIApp(sio, other_asgi_app=health)


def _db_ok(engine: Engine) -> bool:
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception:  # readiness probes report, they never raise
        return False
    return True


#: Longest wait for Redis's answer in ``/readyz`` (the probe's own timeout is 3 s).
READY_PING_S = 1.0


async def _redis_ok(redis: Any) -> bool:
    try:
        return bool(await asyncio.wait_for(redis.ping(), READY_PING_S))
    except Exception:  # readiness probes report, they never raise
        return False


class _DrainingServer(uvicorn.Server):
    """uvicorn, but on SIGTERM/SIGINT the clients are first told to reconnect elsewhere.

    uvicorn would otherwise close every websocket at once (code 1012) and only then run
    the lifespan shutdown, too late to say anything.
    """

    def __init__(self, config: uvicorn.Config, hub: Hub, drain_s: float) -> None:
        super().__init__(config)
        self._hub = hub
        self._drain_s = drain_s

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Drain the Socket.IO clients, then shut down as uvicorn does."""
        await self._hub.drain(self._drain_s)
        await super().shutdown(sockets)


def serve() -> None:
    """Run the notifier under uvicorn with settings from the environment."""
    settings = get_settings()
    configure_logging(
        settings.log_level,
        json_lines=settings.log_json,
        flush_interval_s=settings.log_flush_interval_s,
    )
    flush_logs_on_sigterm()  # uvicorn's shutdown lines are written before it exits
    app = create_app(settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None)
    _DrainingServer(config, hub_of(app.engineio_server), settings.shutdown_drain_s).run()
