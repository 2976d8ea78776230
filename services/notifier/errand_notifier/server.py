"""Builds the Socket.IO server and the ASGI app around it."""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import socketio
from sqlalchemy import Engine

from errand_notifier.metrics import register_room_collector
from errand_notifier.namespace import JobsNamespace
from errand_notifier.relay import Relay
from errand_notifier.settings import NotifierSettings
from errand_notifier.store import Store
from errand_schema.jwt_auth import JwtVerifier
from errand_schema.masking import configure_masking
from errand_schema.telemetry import configure_tracing, instrument_clients

logger = logging.getLogger(__name__)


def create_server(settings: NotifierSettings, engine: Engine) -> socketio.AsyncServer:
    """Return the Socket.IO server with the jobs namespace registered."""
    origins: Any = "*" if settings.cors_origins == ["*"] else settings.cors_origins
    sio = socketio.AsyncServer(async_mode="asgi", cors_allowed_origins=origins)
    configure_masking(settings.masked_fields)
    jwt_config = settings.jwt_config()
    verifier = JwtVerifier(jwt_config) if jwt_config else None
    sio.register_namespace(JobsNamespace(Store(engine, verifier), settings.max_replay))
    register_room_collector(sio)
    if configure_tracing(
        "errand-notifier",
        endpoint=settings.otel_exporter_otlp_endpoint,
        protocol=settings.otel_exporter_otlp_protocol,
    ):
        instrument_clients(engine)
    return sio


@contextlib.asynccontextmanager
async def run_relay(
    sio: socketio.AsyncServer, redis: Any, settings: NotifierSettings
) -> AsyncIterator[Relay]:
    """Run the stream relay for the lifetime of the block."""
    relay = Relay(sio, redis, settings.redis_prefix, settings.stream_block_ms)
    task = asyncio.create_task(relay.run(), name="errand-relay")
    try:
        await asyncio.wait_for(relay.ready.wait(), timeout=10)
        yield relay
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
