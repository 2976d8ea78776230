"""Sends events to the local members of rooms: coalescing, dedupe and bounded buffers.

One packet is encoded per event and queued for each recipient in a plain loop, with no
task per recipient (``AsyncManager.emit`` starts one per recipient: a quarter of the
notifier's CPU in the admin fan-out benchmark, see ``bench/README.md``). Each client
has a lane per job (see :mod:`errand_notifier.lanes`); a client whose outgoing buffer
passes ``max_packets`` is disconnected as a slow consumer.
"""

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Any

import socketio
from engineio import packet as eio_packet

from errand_notifier import metrics, transport
from errand_notifier.lanes import JobLane, LanePolicy, Verdict
from errand_schema.events import EventType, JobEventMessage

logger = logging.getLogger(__name__)

#: Event types after which a job has nothing more to say (until a manual retry).
FINAL_TYPES = frozenset(
    {EventType.COMPLETED, EventType.FAILED, EventType.DEAD, EventType.CANCELLED}
)
#: Lanes kept per client; the least recently used idle one goes first.
MAX_LANES_PER_CLIENT = 512
#: Socket.IO event that tells a client why the server disconnects it.
DISCONNECT_REASON_EVENT = "disconnect_reason"


class _Client:
    __slots__ = ("eio_sid", "evicted", "lanes", "sid")

    def __init__(self, sid: str, eio_sid: str) -> None:
        self.sid = sid
        self.eio_sid = eio_sid
        self.lanes: OrderedDict[str, JobLane] = OrderedDict()
        self.evicted = False

    def lane(self, job_id: str, policy: LanePolicy, now: float) -> JobLane:
        lane = self.lanes.get(job_id)
        if lane is not None:
            self.lanes.move_to_end(job_id)
            return lane
        if len(self.lanes) >= MAX_LANES_PER_CLIENT:
            idle = next((k for k, v in self.lanes.items() if v.pending is None), None)
            self.lanes.pop(idle if idle is not None else next(iter(self.lanes)))
        lane = self.lanes[job_id] = JobLane(policy, now)
        return lane


class Fanout:
    """Delivers job events and feeds to this replica's clients."""

    def __init__(self, sio: socketio.AsyncServer, policy: LanePolicy, max_packets: int) -> None:
        self._sio = sio
        self._policy = policy
        self._max_packets = max_packets
        self._clients: dict[str, _Client] = {}
        #: (sid, job_id) of lanes holding a progress event.
        self._due: set[tuple[str, str]] = set()

    def add_client(self, sid: str) -> None:
        """Start tracking an authenticated client."""
        eio_sid = transport.eio_sid_of(self._sio, sid)
        if eio_sid is not None:
            transport.adopt(self._sio, eio_sid)
            self._clients[sid] = _Client(sid, eio_sid)

    def remove_client(self, sid: str) -> None:
        """Forget a client (its held events are dropped)."""
        self._clients.pop(sid, None)

    def client_count(self) -> int:
        """Return how many clients are tracked."""
        return len(self._clients)

    def acked(self, sid: str, job_id: str, seq: int) -> None:
        """Record that a subscribe ack gave ``sid`` every event of a job up to ``seq``."""
        client = self._clients.get(sid)
        if client is not None:
            client.lane(job_id, self._policy, time.monotonic()).acked(seq)

    async def deliver(self, event: JobEventMessage, rooms: list[str]) -> int:
        """Send one job event to every local member of ``rooms``; return how many got it."""
        payload = event.to_client()
        job_id, seq = str(event.job_id), event.seq
        is_progress = event.type == EventType.PROGRESS
        final = event.type in FINAL_TYPES
        shared: eio_packet.Packet | None = None
        now = time.monotonic()
        sent = 0
        for sid, _eio_sid in transport.participants(self._sio, rooms):
            client = self._clients.get(sid)
            if client is None:
                continue
            decision = client.lane(job_id, self._policy, now).offer(seq, is_progress, now, payload)
            if decision.superseded:
                metrics.PROGRESS_COALESCED.inc(decision.superseded)
            if decision.verdict is Verdict.HOLD:
                self._due.add((sid, job_id))
                continue
            if decision.verdict is Verdict.DROP:
                continue
            if decision.prev_seq is None:
                shared = shared or transport.encode_event(self._sio, "job_event", payload)
                pkt = shared
            else:
                pkt = self._with_prev(payload, decision.prev_seq)
            sent += await self._push(client, pkt)
            if final:
                client.lanes.pop(job_id, None)
        return sent

    async def broadcast(self, event: str, data: Any, rooms: list[str]) -> int:
        """Send a feed event (no coalescing) to every local member of ``rooms``."""
        pkt: eio_packet.Packet | None = None
        sent = 0
        for sid, _eio_sid in transport.participants(self._sio, rooms):
            client = self._clients.get(sid)
            if client is not None:
                pkt = pkt or transport.encode_event(self._sio, event, data)
                sent += await self._push(client, pkt)
        return sent

    async def send_to(self, sid: str, event: str, data: Any) -> None:
        """Send one event to one client."""
        client = self._clients.get(sid)
        if client is not None:
            await self._push(client, transport.encode_event(self._sio, event, data))

    async def flush_due(self) -> None:
        """Send the held progress events whose lanes have a token again."""
        due, self._due = self._due, set()
        now = time.monotonic()
        for sid, job_id in due:
            client = self._clients.get(sid)
            lane = client.lanes.get(job_id) if client is not None else None
            if client is None or lane is None:
                continue
            taken = lane.take_due(now)
            if taken is None:
                if lane.pending is not None:
                    self._due.add((sid, job_id))
                continue
            payload, prev_seq = taken
            pkt = (
                transport.encode_event(self._sio, "job_event", payload)
                if prev_seq is None
                else self._with_prev(payload, prev_seq)
            )
            await self._push(client, pkt)

    async def run_flusher(self) -> None:
        """Flush held progress events until cancelled (a tick of half a token)."""
        tick_s = min(0.05, 0.5 / self._policy.rate_hz)
        while True:
            await asyncio.sleep(tick_s)
            try:
                await self.flush_due()
            except Exception:  # a process boundary: the flusher must not die
                logger.exception("flushing held progress events failed")

    async def disconnect_all(self, reason: str, spread_s: float) -> None:
        """Tell every client why, then disconnect them, spread over ``spread_s``."""
        sids = list(self._clients)
        notice = {"reason": reason, "reconnect": True}
        for sid in sids:
            await self.send_to(sid, DISCONNECT_REASON_EVENT, notice)
        pause = spread_s / len(sids) if sids else 0.0
        for sid in sids:
            metrics.DISCONNECTS.labels(reason).inc()
            await self._sio.disconnect(sid)
            if pause:
                await asyncio.sleep(pause)

    def _with_prev(self, payload: dict[str, Any], prev_seq: int) -> eio_packet.Packet:
        return transport.encode_event(self._sio, "job_event", {**payload, "prev_seq": prev_seq})

    async def _push(self, client: _Client, pkt: eio_packet.Packet) -> int:
        sock = transport.eio_socket(self._sio, client.eio_sid)
        if sock is None or client.evicted:
            return 0
        if transport.queued_packets(sock) >= self._max_packets:
            await self._evict_slow(client)
            return 0
        transport.send_packet(sock, pkt)
        return 1

    async def _evict_slow(self, client: _Client) -> None:
        client.evicted = True
        logger.warning(
            "disconnecting slow client %s: more than %d packets unsent",
            client.sid,
            self._max_packets,
        )
        metrics.DISCONNECTS.labels("slow_consumer").inc()
        notice = {"reason": "slow_consumer", "reconnect": True}
        last_words = transport.encode_event(self._sio, DISCONNECT_REASON_EVENT, notice)
        await transport.evict(self._sio, client.eio_sid, last_words)
        self._clients.pop(client.sid, None)
