"""Reads the event stream and emits each event to the rooms this replica holds."""

import asyncio
import logging
import time
from typing import Any

import socketio
from opentelemetry.trace import SpanKind
from pydantic import ValidationError

from errand_notifier import metrics
from errand_notifier.namespace import ADMIN_ROOM, job_room, user_room
from errand_schema.events import parse_stream_entry, stream_key
from errand_schema.telemetry import extract_context, tracer

logger = logging.getLogger(__name__)

#: Pause after a Redis error before reading again.
RECONNECT_DELAY_S = 0.5


class Relay:
    """Follows the Redis stream from "now" and relays every event.

    Note:
        Every replica reads the whole stream (no consumer group) and emits only to its
        own clients. The loop never dies: a bad entry is logged and dropped; a Redis
        error is retried from the last id seen.
    """

    def __init__(self, sio: socketio.AsyncServer, redis: Any, prefix: str, block_ms: int) -> None:
        self._sio = sio
        self._redis = redis
        self._key = stream_key(prefix)
        self._block_ms = block_ms
        self._last_id: str = "$"
        self.relayed = 0
        self.ready = asyncio.Event()

    async def run(self) -> None:
        """Relay until cancelled."""
        if self._last_id == "$":
            self._last_id = await self._current_last_id()
        self.ready.set()
        while True:
            try:
                batches = await self._redis.xread(
                    {self._key: self._last_id}, block=self._block_ms, count=500
                )
            except asyncio.CancelledError:
                raise
            except Exception:  # keep relaying through Redis restarts
                logger.warning("reading the event stream failed; retrying", exc_info=True)
                await asyncio.sleep(RECONNECT_DELAY_S)
                continue
            for _key, entries in batches or []:
                for entry_id, fields in entries:
                    self._last_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                    await self._emit(fields)

    async def _current_last_id(self) -> str:
        try:
            info = await self._redis.xinfo_stream(self._key)
        except Exception:  # no stream yet, or Redis down: start from the beginning
            return "0-0"
        last = info.get("last-generated-id") or info.get(b"last-generated-id") or "0-0"
        return last.decode() if isinstance(last, bytes) else str(last)

    async def _emit(self, fields: dict[Any, Any]) -> None:
        try:
            event = parse_stream_entry(fields)
        except (ValueError, ValidationError):
            logger.warning("dropping an invalid event from the stream", exc_info=True)
            return
        rooms = [job_room(event.job_id), user_room(event.owner), ADMIN_ROOM]
        started = time.perf_counter()
        with tracer().start_as_current_span(
            "errand.notify",
            context=extract_context(event.trace),
            kind=SpanKind.PRODUCER,
            attributes={
                "errand.job.id": str(event.job_id),
                "errand.event.type": event.type,
                "errand.event.seq": event.seq,
            },
        ):
            await self._sio.emit("job_event", event.to_client(), to=rooms)
        self.relayed += 1
        metrics.record_relay(event.type, time.perf_counter() - started, event.at)
