"""Publishes step messages by name, without importing worker code (STYLE, section 2)."""

import logging

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from opentelemetry.trace import SpanKind

from errand_schema.messages import TRACE_OPTION, RunJobStep
from errand_schema.queues import BROKER_PRIORITY, MAX_PRIORITY, Priority, step_actor_name
from errand_schema.telemetry import inject_context, tracer

logger = logging.getLogger(__name__)


class Publisher:
    """Sends the wake-up message of a job to its queue."""

    def __init__(self, broker: dramatiq.Broker) -> None:
        self._broker = broker

    def publish(self, msg: RunJobStep, queue: str, priority: str) -> bool:
        """Send ``msg``; return False (and log) if the broker could not take it.

        Note:
            A failure is not an error for the caller: the job row is committed with
            ``published_at`` NULL and the reconciler publishes it later.
        """
        with tracer().start_as_current_span(
            "errand.enqueue",
            kind=SpanKind.PRODUCER,
            attributes={"errand.job.id": str(msg.job_id), "messaging.destination.name": queue},
        ) as span:
            message: dramatiq.Message[None] = dramatiq.Message(
                queue_name=queue,
                actor_name=step_actor_name(queue),
                args=(msg.model_dump(mode="json"),),
                kwargs={},
                options={
                    "broker_priority": BROKER_PRIORITY[Priority(priority)],
                    TRACE_OPTION: inject_context(),
                },
            )
            try:
                self._broker.enqueue(message)
            except Exception:  # any broker failure: the row is safe, publish later
                logger.warning(
                    "could not publish job %s; it waits for the reconciler",
                    msg.job_id,
                    exc_info=True,
                )
                span.set_attribute("errand.published", False)
                return False
        return True

    def is_reachable(self) -> bool:
        """Whether the broker answers now (for ``/readyz``).

        Note:
            ``broker.channel`` alone returns the thread's cached channel without any I/O,
            so it would report a dead broker as reachable; pumping the connection's
            events notices a closed socket, and a reconnect then proves the broker is
            back.
        """
        if not isinstance(self._broker, RabbitmqBroker):
            return True
        try:
            self._broker.connection.process_data_events(time_limit=0)
            self._broker.channel  # noqa: B018
            return True
        except Exception:  # a dead connection: drop it and try a fresh one
            logger.debug("broker connection is dead; reconnecting", exc_info=True)
            del self._broker.connection
        try:
            self._broker.channel  # noqa: B018  (opens a new connection)
        except Exception:  # readiness probes report, they never raise
            return False
        return True


def build_broker(url: str) -> RabbitmqBroker:
    """Return the API's broker: publish-only, with priorities and publisher confirms."""
    return RabbitmqBroker(url=url, max_priority=MAX_PRIORITY, confirm_delivery=True, middleware=[])
