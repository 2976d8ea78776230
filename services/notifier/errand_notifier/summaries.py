"""Sends ``jobs_summary`` to the local user rooms (batching: :mod:`errand_notifier.batching`).

Like every feed of the notifier this is per replica: each replica reads the whole
event stream and batches only for users with a client in its own rooms, so each
client gets each summary once, from the replica it is connected to. A user with
clients on two replicas gets a summary on each connection (the two windows may split
the completions differently; each connection still sees every completion once).
"""

import asyncio
import contextlib
import logging
import uuid
from typing import Any, Protocol

import anyio.to_thread
import socketio

from errand_notifier import metrics, transport
from errand_notifier.batching import (
    SUMMARISED_TYPES,
    SUMMARY_EVENT,
    ClosedWindow,
    RecentEvents,
    SummaryBatcher,
    batch_payload,
    immediate_payload,
)
from errand_notifier.rooms import user_room
from errand_schema.events import EventType, JobEventMessage

logger = logging.getLogger(__name__)


class Broadcaster(Protocol):
    """What sending a summary needs of :class:`errand_notifier.fanout.Fanout`."""

    async def broadcast(self, event: str, data: Any, rooms: list[str]) -> int:
        """Send ``event`` to every local member of ``rooms``; return how many got it."""


class TypeReader(Protocol):
    """What a summary needs of :class:`errand_notifier.store.Store`."""

    def job_types(self, job_ids: list[uuid.UUID]) -> dict[uuid.UUID, str]:
        """Return the type of each job that exists."""


class Summaries:
    """Batches completions per local user room; sends failures and cancellations at once."""

    def __init__(
        self,
        sio: socketio.AsyncServer,
        fanout: Broadcaster,
        store: TypeReader,
        batcher: SummaryBatcher,
    ) -> None:
        self._sio = sio
        self._fanout = fanout
        self._store = store
        self.batcher = batcher
        self._recent = RecentEvents()
        self._wake = asyncio.Event()

    async def note(self, event: JobEventMessage) -> None:
        """Take one job event: a completion waits for its window, a failure or a
        cancellation is sent now; anything else (or a repeat) is ignored."""
        if event.type not in SUMMARISED_TYPES:
            return
        room = user_room(event.owner)
        if not transport.room_size(self._sio, room):
            return
        if not self._recent.first_time(event.job_id, event.seq):
            return
        if event.type == EventType.COMPLETED:
            if self.batcher.add_completion(event.owner, event.job_id):
                self._wake.set()
            return
        if await self._fanout.broadcast(SUMMARY_EVENT, immediate_payload(event), [room]):
            metrics.SUMMARIES_SENT.labels("immediate").inc()

    async def flush_due(self) -> int:
        """Send the windows whose time is up; return how many summaries went out."""
        return await self._send(self.batcher.take_due())

    async def flush_all(self) -> int:
        """Send every open window now (on shutdown); return how many went out."""
        return await self._send(self.batcher.take_all())

    async def run(self) -> None:
        """Send each window when it closes, until cancelled."""
        while True:
            self._wake.clear()
            delay = self.batcher.seconds_until_due()
            if delay is None:
                await self._wake.wait()
                continue
            if delay > 0:
                with contextlib.suppress(TimeoutError):  # not wait_for: see catchup.run
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                continue
            try:
                await self.flush_due()
            except Exception:  # a process boundary: the loop must not die
                logger.exception("sending jobs_summary failed")

    async def _send(self, windows: list[ClosedWindow]) -> int:
        live = [w for w in windows if transport.room_size(self._sio, user_room(w.user_id))]
        if not live:
            return 0
        types = await self._read_types([j for w in live for j in w.job_ids])
        sent = 0
        for window in live:
            payload = batch_payload(window, types)
            if await self._fanout.broadcast(SUMMARY_EVENT, payload, [user_room(window.user_id)]):
                sent += 1
        metrics.SUMMARIES_SENT.labels("batched").inc(sent)
        return sent

    async def _read_types(self, job_ids: list[uuid.UUID]) -> dict[uuid.UUID, str]:
        try:
            return await anyio.to_thread.run_sync(self._store.job_types, job_ids)
        except Exception:  # a process boundary: the summary goes out without its types
            logger.warning("reading the types of %d jobs failed", len(job_ids), exc_info=True)
            return {}
