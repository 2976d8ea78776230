"""Prometheus metrics of the notifier: connections, rooms, relayed events, emit latency."""

from datetime import datetime
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
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


def record_relay(event_type: str, emit_s: float, at: datetime) -> None:
    """Count one relayed event and its timings."""
    EVENTS_RELAYED.labels(event_type).inc()
    EMIT_SECONDS.observe(emit_s)
    EVENT_LAG_SECONDS.observe(max(0.0, (utcnow() - at).total_seconds()))


class RoomCollector(Collector):
    """``errand_socketio_rooms``: rooms with members, read at scrape time."""

    def __init__(self, server: Any) -> None:
        self.server = server

    def collect(self) -> Any:
        """Yield the room count of the default namespace."""
        rooms = self.server.manager.rooms.get("/", {})
        family = GaugeMetricFamily("errand_socketio_rooms", "Socket.IO rooms with members")
        family.add_metric([], float(sum(1 for r in rooms if r is not None)))
        yield family


_collector: RoomCollector | None = None


def register_room_collector(server: Any) -> None:
    """Expose the room count of ``server`` (one collector per process; a later server in
    the same process, as in tests, takes it over)."""
    global _collector
    if _collector is None:
        _collector = RoomCollector(server)
        REGISTRY.register(_collector)
    else:
        _collector.server = server
