"""Prometheus metrics of the API, and queue gauges read from PostgreSQL at scrape time."""

import threading
import time
from typing import Any

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector
from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from errand_schema.breakers import list_breakers
from errand_schema.models import Job, utcnow
from errand_schema.states import JobStatus

HTTP_REQUESTS = Counter(
    "errand_http_requests_total", "HTTP requests", ["method", "route", "status"]
)
HTTP_SECONDS = Histogram(
    "errand_http_request_duration_seconds",
    "HTTP request duration",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
)
JOBS_SUBMITTED = Counter("errand_jobs_submitted_total", "Jobs accepted", ["type", "queue"])
RATE_LIMITED = Counter("errand_rate_limited_total", "Submissions refused by the rate limit")
RATE_LIMIT_UNCHECKED = Counter(
    "errand_rate_limit_unchecked_total",
    "Jobs submitted without a rate-limit check (Redis unreachable)",
)

#: Scrapes within this many seconds reuse the last database read.
CACHE_S = 2.0


class QueueCollector(Collector):
    """Queue depth, running, retrying and dead jobs, the oldest queued job's age, and
    the circuit breakers' states (from Redis)."""

    def __init__(self, engine: Engine, redis: Any = None, prefix: str = "errand:") -> None:
        self._engine = engine
        self._redis = redis
        self._prefix = prefix
        self._lock = threading.Lock()
        self._cached: tuple[float, list[Any]] = (0.0, [])

    def use(self, engine: Engine, redis: Any = None, prefix: str = "errand:") -> None:
        """Read through another engine (and Redis) from now on."""
        with self._lock:
            self._engine = engine
            self._redis = redis
            self._prefix = prefix
            self._cached = (0.0, [])

    def describe(self) -> Any:
        """The metric names, without reading (registration would otherwise collect, and
        cache, a read before anything happened)."""
        return [
            GaugeMetricFamily(name, doc)
            for name, doc in (
                ("errand_queue_depth", "Jobs queued (waiting to run)"),
                ("errand_jobs_running", "Jobs running"),
                ("errand_jobs_retrying", "Jobs waiting for a retry"),
                ("errand_dlq_depth", "Dead jobs in the DLQ"),
                ("errand_queue_oldest_age_seconds", "Age of the oldest queued job"),
                ("errand_breaker_open", "1 while a circuit breaker is open or half-open"),
                ("errand_breaker_consecutive_failures", "Consecutive failed attempts"),
            )
        ]

    def collect(self) -> Any:
        """Yield the gauges (read at most every :data:`CACHE_S`)."""
        with self._lock:
            at, families = self._cached
            if time.monotonic() - at > CACHE_S:
                families = self._read() + self._read_breakers()
                self._cached = (time.monotonic(), families)
        yield from families

    def _read(self) -> list[Any]:
        depth = GaugeMetricFamily(
            "errand_queue_depth", "Jobs queued (waiting to run)", labels=["queue"]
        )
        running = GaugeMetricFamily("errand_jobs_running", "Jobs running", labels=["queue"])
        retrying = GaugeMetricFamily(
            "errand_jobs_retrying", "Jobs waiting for a retry", labels=["queue"]
        )
        dead = GaugeMetricFamily("errand_dlq_depth", "Dead jobs in the DLQ", labels=["queue"])
        oldest = GaugeMetricFamily(
            "errand_queue_oldest_age_seconds", "Age of the oldest queued job", labels=["queue"]
        )
        gauges = {
            JobStatus.QUEUED: depth,
            JobStatus.RUNNING: running,
            JobStatus.RETRYING: retrying,
            JobStatus.DEAD: dead,
        }
        try:
            with Session(self._engine) as session:
                rows = session.exec(
                    select(Job.queue, Job.status, func.count(), func.min(Job.created_at))
                    .where(col(Job.status).in_(list(gauges)))
                    .group_by(col(Job.queue), col(Job.status))
                ).all()
        except Exception:  # a scrape must not fail because the database blinked
            return []
        now = utcnow()
        for queue, status, count, first in rows:
            gauges[JobStatus(status)].add_metric([queue], float(count))
            if status == JobStatus.QUEUED and first is not None:
                oldest.add_metric([queue], max(0.0, (now - first).total_seconds()))
        return [depth, running, retrying, dead, oldest]

    def _read_breakers(self) -> list[Any]:
        is_open = GaugeMetricFamily(
            "errand_breaker_open",
            "1 while a circuit breaker is open or half-open (probing), else 0",
            labels=["breaker", "state"],
        )
        failures = GaugeMetricFamily(
            "errand_breaker_consecutive_failures",
            "Consecutive failed attempts a circuit breaker has counted",
            labels=["breaker"],
        )
        if self._redis is None:
            return []
        try:
            breakers = list_breakers(self._redis, self._prefix)
        except Exception:  # a scrape must not fail because Redis blinked
            return []
        for breaker in breakers:
            state = 1.0 if breaker.state in ("open", "half_open") else 0.0
            is_open.add_metric([breaker.key, breaker.state], state)
            failures.add_metric([breaker.key], float(breaker.failures))
        return [is_open, failures]


_collector: QueueCollector | None = None


def register_queue_collector(engine: Engine, redis: Any = None, prefix: str = "errand:") -> None:
    """Expose the queue and breaker gauges (one collector per process; a later app in
    the same process, as in tests, takes it over)."""
    global _collector
    if _collector is None:
        _collector = QueueCollector(engine, redis, prefix)
        REGISTRY.register(_collector)
    else:
        _collector.use(engine, redis, prefix)
