"""Reads back from PostgreSQL the events of subscribed jobs that the stream missed.

The stream is the live feed, ``job_events`` the record. An event that never reached the
stream (Redis down, or restarted empty) would leave a subscriber with a stale final
state, since nothing after it would reveal the gap. So each replica compares the
latest seq of every job it holds a room for with the highest seq it delivered, and
delivers what is missing: every ``resync_interval_s`` while the stream is down, at
once when it is back, and every ``sweep_s`` otherwise.
"""

import asyncio
import contextlib
import logging
import uuid

import anyio.to_thread
import socketio

from errand_notifier import metrics, transport
from errand_notifier.relay import Deliver, Relay
from errand_notifier.rooms import JOB_ROOM_PREFIX, job_id_of_room
from errand_notifier.store import JobHead, Store

logger = logging.getLogger(__name__)

#: Held jobs compared with PostgreSQL per thread-pool call.
SLICE = 500


class CatchUp:
    """Keeps, per held job, the highest seq delivered, and fills gaps from PostgreSQL."""

    def __init__(
        self, sio: socketio.AsyncServer, store: Store, deliver: Deliver, max_replay: int
    ) -> None:
        self._sio = sio
        self._store = store
        self._deliver = deliver
        self._max_replay = max_replay
        #: Highest seq delivered (or acked) per job with a local room.
        self.cursors: dict[uuid.UUID, int] = {}
        #: The job of each local ``job:`` room, as parsed at the last sweep.
        self._room_ids: dict[str, uuid.UUID] = {}

    def note(self, job_id: uuid.UUID, seq: int) -> None:
        """Record that ``seq`` of a job reached this replica's clients."""
        if seq > self.cursors.get(job_id, 0):
            self.cursors[job_id] = seq

    async def run_once(self) -> int:
        """Deliver what the held jobs miss; return how many events were read back.

        Note:
            At thousands of held jobs this must not hold the event loop: the rooms'
            job ids are parsed once per room (not once per sweep), and the jobs are
            compared in slices of :data:`SLICE`, each in the thread pool, so events
            flow between them.
        """
        held = self._held_jobs()
        for gone in self.cursors.keys() - held:
            del self.cursors[gone]
        ids = list(held)
        resent = 0
        for start in range(0, len(ids), SLICE):
            # Jobs without a cursor yet are only looked up (-1: any seq), to start one.
            known = {j: self.cursors.get(j, -1) for j in ids[start : start + SLICE]}
            heads = await anyio.to_thread.run_sync(self._store.heads_after, known)
            for job_id, head in heads.items():
                resent += await self._fill(job_id, head)
        if resent:
            metrics.RESYNCED_EVENTS.inc(resent)
            logger.info("read back %d events the stream missed", resent)
        return resent

    def _held_jobs(self) -> set[uuid.UUID]:
        """Return the jobs with a local room (room names parsed once each)."""
        parsed: dict[str, uuid.UUID] = {}
        for room in transport.local_rooms(self._sio):
            if not room.startswith(JOB_ROOM_PREFIX):
                continue
            job_id = self._room_ids.get(room) or job_id_of_room(room)
            if job_id is not None:
                parsed[room] = job_id
        self._room_ids = parsed
        return set(parsed.values())

    async def _fill(self, job_id: uuid.UUID, head: JobHead) -> int:
        """Deliver the events of one job after its cursor; return how many."""
        known = self.cursors.get(job_id)
        if known is None or head.seq <= known:
            self.cursors.setdefault(job_id, head.seq)
            return 0
        events = await anyio.to_thread.run_sync(
            self._store.events_after, job_id, head.owner_id, known, self._max_replay
        )
        for event in events:
            await self._deliver(event)
            self.note(job_id, event.seq)
        return len(events)

    async def run(self, relay: Relay, interval_s: float, sweep_s: float) -> None:
        """Catch up while ``relay``'s stream is down, after it recovers, and every
        ``sweep_s`` (0: never) otherwise; until cancelled."""
        since_sweep = 0.0
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11 a wait_for whose inner wait
            # ends as the task is cancelled swallows the cancellation, and the shutdown
            # that awaits this task then waits forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval_s):
                    await relay.recovered.wait()
            since_sweep += interval_s
            due = not relay.stream_up or relay.recovered.is_set()
            if sweep_s and since_sweep >= sweep_s:
                due = True
            if not due:
                continue
            relay.recovered.clear()
            since_sweep = 0.0
            try:
                await self.run_once()
            except Exception:  # a process boundary: PostgreSQL may be down too
                logger.warning("catching up from PostgreSQL failed", exc_info=True)
