"""Open each worker thread's connections before it takes its first message."""

import logging
from typing import Any

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from sqlalchemy import text

from errand_schema.db import HeldConnections

logger = logging.getLogger(__name__)


class WarmThreads(dramatiq.Middleware):
    """Each worker thread opens its connections when it starts, not on its first step.

    A thread's first step used to open its held PostgreSQL connection and, to send the
    next step's message, its own RabbitMQ connection and confirming channel (Dramatiq
    keeps one per thread): about 8 ms on an idle 2-core machine and more under load,
    paid inside the step-to-step hand-off. With 16 threads those first hand-offs were
    the multi-step benchmark's whole p99 (bench/HISTORY.md). Opened here instead, in
    the thread itself (Dramatiq's ``after_worker_thread_boot``), before it runs a step.
    A connection that fails to open is logged and left to the first step, which opens
    it as before.

    RabbitMQ closes a connection that sends no heartbeat for its heartbeat timeout (60
    s by default), and a pika blocking connection sends them only while its thread is
    in a pika call: a thread idle that long finds its connection closed and Dramatiq
    opens a new one on its next send (it retries a send on a closed connection), as
    before this middleware; only the first minute after a start is spared.
    """

    def __init__(self, held: HeldConnections | None) -> None:
        """``held``: the threads' kept database connections, or None where the steps do
        not use them (SQLite runs its claims in transactions of a pooled connection)."""
        self._held = held

    def after_worker_thread_boot(self, broker: dramatiq.Broker, thread: Any) -> None:
        """Open this thread's held database connection and its publishing channel."""
        if self._held is not None:
            try:
                with self._held.use() as conn:
                    conn.execute(text("SELECT 1")).scalar_one()
            except Exception:  # a boot step must not stop the thread: its first step retries
                logger.warning(
                    "could not open a worker thread's database connection", exc_info=True
                )
        if isinstance(broker, RabbitmqBroker):
            try:
                _ = broker.channel  # this thread's connection and channel (thread-local)
            except Exception:
                logger.warning("could not open a worker thread's RabbitMQ channel", exc_info=True)
