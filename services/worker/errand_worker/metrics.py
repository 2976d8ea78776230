"""Prometheus metrics of the worker, served on ``ERRAND_METRICS_PORT``.

Dramatiq runs several worker processes; they write to ``PROMETHEUS_MULTIPROC_DIR`` (set
by ``errand worker``) and whichever process binds the port first serves the sum of all.
"""

import logging

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
    start_http_server,
)

logger = logging.getLogger(__name__)

_LABELS = ["type", "queue"]
JOBS_STARTED = Counter("errand_jobs_started_total", "Attempts started", _LABELS)
JOBS_COMPLETED = Counter("errand_jobs_completed_total", "Jobs completed", _LABELS)
JOBS_FAILED = Counter("errand_jobs_failed_total", "Jobs failed for good", _LABELS)
JOBS_RETRIED = Counter("errand_jobs_retried_total", "Failed attempts that will be retried", _LABELS)
JOBS_DEAD = Counter("errand_jobs_dead_total", "Jobs whose attempts ran out (DLQ)", _LABELS)
JOBS_CANCELLED = Counter("errand_jobs_cancelled_total", "Jobs cancelled while running", _LABELS)
STEP_SECONDS = Histogram(
    "errand_step_duration_seconds",
    "Duration of one attempt at a step",
    _LABELS,
    buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300),
)
QUEUE_WAIT_SECONDS = Histogram(
    "errand_queue_wait_seconds",
    "From a message's enqueue to its processing",
    ["queue"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120),
)
STEPS_RUNNING = Gauge(
    "errand_steps_running", "Steps running now", ["queue"], multiprocess_mode="livesum"
)
BREAKER_FAILURES = Counter(
    "errand_breaker_failures_total",
    "Failed attempts reported to a circuit breaker, by breaker and its state after",
    ["breaker", "state"],
)

#: Outcome kind -> the counter it moves.
OUTCOME_COUNTERS = {
    "completed": JOBS_COMPLETED,
    "failed": JOBS_FAILED,
    "retrying": JOBS_RETRIED,
    "dead": JOBS_DEAD,
    "cancelled": JOBS_CANCELLED,
}


def serve_metrics(port: int, multiprocess_dir: str | None) -> bool:
    """Serve the metrics of every worker process on ``port``; False if another serves."""
    registry: CollectorRegistry | None = None
    if multiprocess_dir:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    try:
        if registry is not None:
            start_http_server(port, registry=registry)
        else:
            start_http_server(port)
    except OSError:
        return False
    logger.info("metrics on port %d", port)
    return True
