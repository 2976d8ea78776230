"""Everything one notifier replica holds, and the one path every job event takes to its
clients (from the stream or read back from PostgreSQL)."""

import logging
import time

import socketio
from opentelemetry.trace import SpanKind

from errand_notifier import metrics, transport
from errand_notifier.batching import SummaryBatcher
from errand_notifier.catchup import CatchUp
from errand_notifier.fanout import Fanout
from errand_notifier.feeds import Feeds
from errand_notifier.heap import HeapKeeper
from errand_notifier.lanes import LanePolicy
from errand_notifier.rooms import ADMIN_ROOM, job_room, user_room
from errand_notifier.settings import NotifierSettings
from errand_notifier.store import Store
from errand_notifier.summaries import Summaries
from errand_schema.events import EventType, JobEventMessage
from errand_schema.telemetry import extract_context, tracer

logger = logging.getLogger(__name__)


class Hub:
    """The replica's clients, rooms, feeds and catch-up, wired together."""

    def __init__(self, sio: socketio.AsyncServer, store: Store, settings: NotifierSettings):
        self.sio = sio
        self.store = store
        self.settings = settings
        policy = LanePolicy(settings.progress_rate_hz, settings.progress_burst)
        self.fanout = Fanout(sio, policy, settings.client_buffer_max_packets)
        self.catchup = CatchUp(sio, store, self.deliver, settings.max_replay)
        self.feeds = Feeds(
            sio,
            self.fanout,
            store,
            settings.admin_stats_interval_s,
            settings.user_stats_interval_s,
        )
        self.summaries = Summaries(
            sio, self.fanout, store, SummaryBatcher(settings.summary_window_s)
        )
        self.heap = HeapKeeper(settings.gc_full_every_s)
        #: True once shutdown began: new connections are refused, /readyz is 503.
        self.draining = False

    async def deliver(self, event: JobEventMessage) -> None:
        """Send one job event to its job's room, its owner's room and the admin room."""
        room = job_room(event.job_id)
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
            sent = await self.fanout.deliver(event, [room, user_room(event.owner), ADMIN_ROOM])
        if transport.room_size(self.sio, room):
            self.catchup.note(event.job_id, event.seq)
        if event.type != EventType.PROGRESS:
            self.feeds.user_changed(event.owner)
            await self.summaries.note(event)
        metrics.record_relay(event.type, time.perf_counter() - started, event.at, sent)

    async def drain(self, spread_s: float) -> None:
        """Refuse new clients; send the open ``jobs_summary`` windows; tell the clients
        to reconnect elsewhere and disconnect them over ``spread_s`` seconds."""
        self.draining = True
        try:
            await self.summaries.flush_all()
        except Exception:  # a process boundary: the clients must still be told to go
            logger.warning("sending the open jobs_summary windows failed", exc_info=True)
        await self.fanout.disconnect_all("shutdown", spread_s)


def hub_of(sio: socketio.AsyncServer) -> Hub:
    """Return the hub of a server built by :func:`errand_notifier.server.create_server`."""
    hub = getattr(sio.namespace_handlers.get(transport.NAMESPACE), "hub", None)
    if not isinstance(hub, Hub):
        raise LookupError("this Socket.IO server has no Errand hub")
    return hub
