"""Publishes step messages by name, without importing worker code (STYLE, section 2)."""

import contextvars
import json
import logging
from typing import Any

import dramatiq
import pika
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from opentelemetry.trace import SpanKind

from errand_schema.messages import TRACE_OPTION, RunJobStep
from errand_schema.queues import BROKER_PRIORITY, MAX_PRIORITY, Priority, step_actor_name
from errand_schema.telemetry import inject_context, tracer, tracing_enabled

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
            message = _message(msg, queue, priority)
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


def _message(msg: RunJobStep, queue: str, priority: str) -> "dramatiq.Message[None]":
    """The Dramatiq message of ``msg`` (carrying the current trace context)."""
    return dramatiq.Message(
        queue_name=queue,
        actor_name=step_actor_name(queue),
        args=(msg.model_dump(mode="json"),),
        kwargs={},
        options={
            "broker_priority": BROKER_PRIORITY[Priority(priority)],
            TRACE_OPTION: inject_context(),
        },
    )


#: A message to send: (message, queue, priority), and the context it was made in.
Outgoing = tuple[RunJobStep, str, str, contextvars.Context]


class GroupPublisher:
    """Sends the messages of several submissions with one wait for the broker.

    :class:`Publisher` waits for each message's publisher confirm: one round trip to
    RabbitMQ per job, which measured as ~40% of the API's throughput under concurrent
    submissions (bench/HISTORY.md). Here a group goes out on a channel in AMQP
    transaction mode and is committed at once: RabbitMQ takes responsibility for every
    message of the group at ``tx.commit-ok`` (durable, as at a confirm) and reports an
    unroutable one with ``basic.return`` before it ("Broker Semantics" in RabbitMQ's
    documentation). A channel in confirm mode, as Dramatiq's, cannot do that: pika's
    blocking channel waits for each confirm in turn.

    Not thread-safe: one per thread (the connection is the caller's).
    """

    def __init__(self, broker: RabbitmqBroker) -> None:
        self._broker = broker
        self._connection: Any = None
        self._channel: Any = None
        #: Message ids RabbitMQ returned as unroutable in the current group.
        self._returned: set[str] = set()
        #: The current group's message ids, and whether its transaction committed.
        self._ids: list[str] = []
        self._committed = False

    def publish(self, messages: list[Outgoing]) -> list[bool]:
        """Send ``messages``; return, for each, whether the broker took it (False:
        logged; its row waits for the reconciler, as with :meth:`Publisher.publish`).

        A group that fails on a connection that went stale is sent once more on a new
        one (nothing of an uncommitted transaction was taken).
        """
        if not messages:
            return []
        for attempt in (1, 2):
            self._committed = False
            try:
                return self._send(messages)
            except Exception:  # any broker failure: the rows are safe, publish later
                self.close()
                if self._committed:
                    # Taken by the broker; only the returns' delivery failed after:
                    # sending again would send the group twice.
                    logger.warning("the group's publish failed after its commit", exc_info=True)
                    return [mid not in self._returned for mid in self._ids]
                if attempt == 2:
                    logger.warning(
                        "could not publish %d jobs (%s%s); they wait for the reconciler",
                        len(messages),
                        ", ".join(str(m[0].job_id) for m in messages[:3]),
                        ", ..." if len(messages) > 3 else "",
                        exc_info=True,
                    )
        return [False] * len(messages)

    def close(self) -> None:
        """Close the connection (the next group opens a new one)."""
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except Exception:  # already broken
                logger.debug("closing the group publisher's connection failed", exc_info=True)

    def _send(self, messages: list[Outgoing]) -> list[bool]:
        channel = self._open()
        for queue in {queue for _, queue, _, _ in messages}:
            self._broker.declare_queue(queue, ensure=True)
        self._returned.clear()
        self._ids = [
            ctx.run(self._put, channel, msg, queue, prio) for msg, queue, prio, ctx in messages
        ]
        channel.tx_commit()
        self._committed = True
        # Returns arrive before commit-ok; pika hands them to the callback here.
        self._connection.process_data_events(time_limit=0)
        return [message_id not in self._returned for message_id in self._ids]

    def _put(self, channel: Any, msg: RunJobStep, queue: str, priority: str) -> str:
        if not tracing_enabled():
            # No span to record: without one the trace context carried is the same (a
            # no-op tracer's span is its parent's), and a no-op span per message was
            # ~3% of the API's CPU in the enqueue benchmark (bench/README.md).
            return self._write(channel, msg, queue, priority)
        with tracer().start_as_current_span(
            "errand.enqueue",
            kind=SpanKind.PRODUCER,
            attributes={"errand.job.id": str(msg.job_id), "messaging.destination.name": queue},
        ):
            return self._write(channel, msg, queue, priority)

    def _write(self, channel: Any, msg: RunJobStep, queue: str, priority: str) -> str:
        """Put the message's frames in the channel's output buffer; ``tx_commit`` writes
        the whole group's in one go. The blocking channel's own ``basic_publish`` flushed
        the socket after each message (a write and a poll per job, though the group
        commits once), so this goes to pika's channel implementation beneath it
        (``BlockingChannel._impl``, as the worker's acks do: errand_worker.consumer)."""
        message = _message(msg, queue, priority)
        channel._impl.basic_publish(
            exchange="",
            routing_key=queue,
            body=message.encode(),
            properties=pika.BasicProperties(
                delivery_mode=2, priority=message.options.get("broker_priority")
            ),
            mandatory=True,
        )
        return message.message_id

    def _open(self) -> Any:
        if self._channel is None:
            self._connection = pika.BlockingConnection(parameters=self._broker.parameters)
            channel = self._connection.channel()
            channel.tx_select()
            channel.add_on_return_callback(self._on_return)
            self._channel = channel
        return self._channel

    def _on_return(self, _channel: Any, method: Any, _properties: Any, body: bytes) -> None:
        # As Dramatiq does: the queue may be gone; declare it again before its next use.
        self._broker.queues_pending.add(method.routing_key)
        try:
            self._returned.add(json.loads(body)["message_id"])
        except (ValueError, KeyError, TypeError):
            logger.warning("RabbitMQ returned a message that is not Dramatiq's")


def build_broker(url: str) -> RabbitmqBroker:
    """Return the API's broker: publish-only, with priorities and publisher confirms."""
    return RabbitmqBroker(url=url, max_priority=MAX_PRIORITY, confirm_delivery=True, middleware=[])
