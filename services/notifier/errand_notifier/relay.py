"""Reads the event stream and hands every event to the replica's delivery."""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError
from redis.exceptions import ResponseError

from errand_notifier import metrics
from errand_schema.events import JobEventMessage, parse_stream_entry, stream_key

logger = logging.getLogger(__name__)

#: Pause after a Redis error before reading again.
RECONNECT_DELAY_S = 0.5
#: Entries read per XREAD.
READ_COUNT = 500

Deliver = Callable[[JobEventMessage], Awaitable[None]]


class Relay:
    """Follows the Redis stream from "now" and delivers every event.

    Note:
        Every replica reads the whole stream (no consumer group) and emits only to its
        own clients. The loop never dies: a bad entry is logged and dropped; a Redis
        error is retried from the last id seen. While the stream is unreadable
        ``stream_up`` is False, and ``recovered`` is set when it is readable again, so
        that what the stream missed meanwhile is read back from PostgreSQL.
    """

    def __init__(self, deliver: Deliver, redis: Any, prefix: str, block_ms: int) -> None:
        self._deliver = deliver
        self._redis = redis
        self._key = stream_key(prefix)
        self._block_ms = block_ms
        self._last_id: str = "$"
        self.relayed = 0
        self.ready = asyncio.Event()
        self.stream_up = True
        self.recovered = asyncio.Event()

    async def run(self) -> None:
        """Relay until cancelled."""
        if self._last_id == "$":
            self._last_id = await self._current_last_id()
        self.ready.set()
        # Down already when its first read failed (Redis away at startup).
        metrics.STREAM_UP.set(1 if self.stream_up else 0)
        while True:
            try:
                batches = await self._redis.xread(
                    {self._key: self._last_id}, block=self._block_ms, count=READ_COUNT
                )
            except asyncio.CancelledError:
                raise
            except Exception:  # keep relaying through Redis restarts
                self._mark_down()
                await asyncio.sleep(RECONNECT_DELAY_S)
                continue
            self._mark_up()
            for _key, entries in batches or []:
                for entry_id, fields in entries:
                    self._last_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                    await self._relay_entry(fields)

    def _mark_down(self) -> None:
        if self.stream_up:
            logger.warning("reading the event stream failed; retrying", exc_info=True)
            self.stream_up = False
            metrics.STREAM_UP.set(0)

    def _mark_up(self) -> None:
        if not self.stream_up:
            logger.info("the event stream is readable again; catching up from PostgreSQL")
            self.stream_up = True
            metrics.STREAM_UP.set(1)
            self.recovered.set()

    async def _current_last_id(self) -> str:
        try:
            info = await self._redis.xinfo_stream(self._key)
        except ResponseError:  # no stream yet: from its first entry
            return "0-0"
        except Exception:  # Redis down: from now on (PostgreSQL fills the gap)
            self._mark_down()
            return f"{int(time.time() * 1000)}-0"
        last = info.get("last-generated-id") or info.get(b"last-generated-id") or "0-0"
        return last.decode() if isinstance(last, bytes) else str(last)

    async def _relay_entry(self, fields: dict[Any, Any]) -> None:
        try:
            event = parse_stream_entry(fields)
        except (ValueError, ValidationError):
            logger.warning("dropping an invalid event from the stream", exc_info=True)
            return
        try:
            await self._deliver(event)
        except Exception:  # a process boundary: one failed delivery must not stop the relay
            logger.exception("delivering event %s of job %s failed", event.seq, event.job_id)
        self.relayed += 1
