"""Builds the Socket.IO server and runs the replica's background loops."""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import socketio
from sqlalchemy import Engine

from errand_notifier import transport
from errand_notifier.hub import Hub, hub_of
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
    sio = socketio.AsyncServer(
        async_mode="asgi",
        cors_allowed_origins=origins,
        ping_interval=settings.ping_interval_s,
        ping_timeout=settings.ping_timeout_s,
    )
    transport.lighten(sio)
    configure_masking(settings.masked_fields)
    jwt_config = settings.jwt_config()
    verifier = JwtVerifier(jwt_config) if jwt_config else None
    hub = Hub(sio, Store(engine, verifier), settings)
    sio.register_namespace(JobsNamespace(hub))
    register_room_collector(sio)
    if configure_tracing(
        "errand-notifier",
        endpoint=settings.otel_exporter_otlp_endpoint,
        protocol=settings.otel_exporter_otlp_protocol,
    ):
        instrument_clients(engine)
    return sio


#: How long the shutdown waits for the notifier's loops to stop.
SHUTDOWN_WAIT_S = 5.0
#: How often a task that is still running after its cancellation is cancelled again.
CANCEL_AGAIN_S = 0.1


@contextlib.asynccontextmanager
async def run_relay(
    sio: socketio.AsyncServer, redis: Any, settings: NotifierSettings
) -> AsyncIterator[Relay]:
    """Run the stream relay, the catch-up, the progress flusher, the feeds and the
    ``jobs_summary`` windows for the lifetime of the block; send the open windows at
    its end."""
    hub: Hub = hub_of(sio)
    relay = Relay(hub.deliver, redis, settings.redis_prefix, settings.stream_block_ms)
    loops: dict[str, Coroutine[Any, Any, None]] = {
        "errand-relay": relay.run(),
        "errand-catchup": hub.catchup.run(
            relay, settings.resync_interval_s, settings.resync_sweep_s
        ),
        "errand-flusher": hub.fanout.run_flusher(),
        "errand-admin-feed": hub.feeds.run_admin(),
        "errand-user-feed": hub.feeds.run_users(),
        "errand-summaries": hub.summaries.run(),
    }
    if settings.gc_freeze_interval_s:
        loops["errand-heap"] = hub.heap.run(settings.gc_freeze_interval_s, hub.fanout.client_count)
    tasks = [asyncio.create_task(coro, name=name) for name, coro in loops.items()]
    try:
        # Its first read gives up on a silent Redis after the client's timeout.
        first_read_s = settings.redis_timeout_s + settings.stream_block_ms / 1000
        await asyncio.wait_for(relay.ready.wait(), timeout=max(10.0, first_read_s + 5))
        yield relay
    finally:
        try:
            await hub.summaries.flush_all()
        except Exception:  # a process boundary: shutdown goes on
            logger.warning("sending the open jobs_summary windows failed", exc_info=True)
        for task in await stop_tasks(tasks, SHUTDOWN_WAIT_S):
            logger.warning("%s did not stop within %s s", task.get_name(), SHUTDOWN_WAIT_S)


async def stop_tasks(tasks: list[asyncio.Task[None]], timeout_s: float) -> set[asyncio.Task[None]]:
    """Cancel ``tasks`` and wait for them, for at most ``timeout_s``; return those
    still running.

    A cancellation can be lost below our code: redis-py 8's async client over fakeredis
    lost about one in twenty while it sent a command with another thread writing
    (Python 3.11's ``wait_for`` has such a race too), and the relay then read on as if
    never cancelled. Such a task held the shutdown for the whole wait, and could hold
    the event loop's own end (which cancels once more, then waits without a bound) for
    ever: the likely cause of a test teardown stuck past its 120 s in CI. So the tasks
    still running are cancelled again every ``CANCEL_AGAIN_S`` until they end or the
    time is up.
    """
    deadline = asyncio.get_running_loop().time() + timeout_s
    running = set(tasks)
    while running:
        for task in running:
            task.cancel()
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            break
        _, running = await asyncio.wait(running, timeout=min(left, CANCEL_AGAIN_S))
    return running
