"""Prometheus metrics of the notifier: connections, rooms, relayed events, backpressure,
summaries."""

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector

from errand_schema.models import utcnow

EVENTS_RELAYED = Counter(
    "errand_events_relayed_total", "Job events relayed to Socket.IO rooms", ["type"]
)
EMIT_SECONDS = Histogram(
    "errand_socketio_emit_seconds",
    "Time to emit one event to its rooms",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
EVENT_LAG_SECONDS = Histogram(
    "errand_event_delivery_lag_seconds",
    "From an event's time to its emit by the notifier",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
CONNECTIONS = Gauge("errand_socketio_connections", "Open Socket.IO connections")
CONNECTIONS_REFUSED = Counter(
    "errand_socketio_connections_refused_total",
    "Socket.IO connections refused, by reason",
    ["reason"],
)
DISCONNECTS = Counter(
    "errand_socketio_server_disconnects_total",
    "Clients the server disconnected, by reason",
    ["reason"],
)
DELIVERIES = Counter(
    "errand_socketio_deliveries_total", "Job events queued for clients (one per recipient)"
)
PROGRESS_COALESCED = Counter(
    "errand_progress_coalesced_total",
    "Progress events not sent to a client because a newer one superseded them",
)
RESYNCED_EVENTS = Counter(
    "errand_events_resynced_total",
    "Job events read back from PostgreSQL because the event stream missed them",
)
SUMMARIES_SENT = Counter(
    "errand_jobs_summaries_total",
    "jobs_summary events sent to user rooms: batched completions, or an immediate "
    "failure or cancellation",
    ["kind"],
)
GC_PAUSE_SECONDS = Histogram(
    "errand_notifier_gc_pause_seconds",
    "Garbage collection steps of the notifier's heap keeper (step: objects newer than "
    "the last step; full: every object, after clients left)",
    ["kind"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
STREAM_UP = Gauge("errand_event_stream_up", "1 while the Redis event stream is readable")


def record_relay(event_type: str, emit_s: float, at: datetime, recipients: int) -> None:
    """Count one relayed event and its timings."""
    EVENTS_RELAYED.labels(event_type).inc()
    EMIT_SECONDS.observe(emit_s)
    EVENT_LAG_SECONDS.observe(max(0.0, (utcnow() - at).total_seconds()))
    DELIVERIES.inc(recipients)


class RoomCollector(Collector):
    """Room gauges read at scrape time: rooms with members, and members by room kind."""

    def __init__(self, server: Any) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        """Yield ``errand_socketio_rooms`` and ``errand_socketio_room_members``."""
        rooms = self.server.manager.rooms.get("/", {})
        count = GaugeMetricFamily("errand_socketio_rooms", "Socket.IO rooms with members")
        count.add_metric([], float(sum(1 for r, m in rooms.items() if r is not None and m)))
        yield count
        members = GaugeMetricFamily(
            "errand_socketio_room_members",
            "Memberships of Socket.IO rooms, by kind of room (job, user, admin)",
            labels=["kind"],
        )
        totals = {"job": 0, "user": 0, "admin": 0}
        for room, sids in list(rooms.items()):
            kind = room.split(":", 1)[0] if isinstance(room, str) else None
            if kind in totals:
                totals[kind] += len(sids)
        for kind, n in totals.items():
            members.add_metric([kind], float(n))
        yield members


_collector: RoomCollector | None = None


def register_room_collector(server: Any) -> None:
    """Expose the room gauges of ``server`` (one collector per process; a later server in
    the same process, as in tests, takes it over)."""
    global _collector
    if _collector is None:
        _collector = RoomCollector(server)
        REGISTRY.register(_collector)
    else:
        _collector.server = server
