"""RabbitMQ consumption with the acknowledgements of many messages sent together.

Dramatiq's worker threads settle each finished message through the consumer, which
queues a callback on the consumer's connection per message; in it pika's blocking
channel sends the ``basic.ack`` and then runs its I/O loop until the frame is written:
a poll and a write per message, about a tenth of a worker process's Python under the
drain benchmark (bench/README.md). Here the settlements made before the connection
next runs its callbacks are queued in order and sent from one callback: every frame
but the last goes into the connection's output buffer, and the last one's blocking
call writes them all. Each message is still settled by itself (no ``multiple``):
which messages are settled, and when, is what Dramatiq decides; only the write is
shared. The callback is queued, under the same lock, by the first settlement after the
last send, so it precedes any callback queued later (``close()`` waits for those).

Dramatiq has no public consumer to extend: this subclasses its RabbitMQ consumer
(``dramatiq.brokers.rabbitmq._RabbitmqConsumer``) and uses pika's channel
implementation under the blocking channel (``BlockingChannel._impl``), both pinned in
``uv.lock`` and exercised by ``tests/integration/test_batched_acks.py``.
"""

import threading
from typing import Any

import pika.exceptions
from dramatiq.brokers.rabbitmq import RabbitmqBroker, _RabbitmqConsumer
from dramatiq.errors import ConnectionClosed


class BatchedAckConsumer(_RabbitmqConsumer):
    """A Dramatiq RabbitMQ consumer whose acks and nacks share writes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._settle_lock = threading.Lock()
        #: (delivery tag, ack: True / dead-letter: False), in the order Dramatiq settled them
        self._pending: list[tuple[int, bool]] = []

    def ack(self, message: Any) -> None:
        """Acknowledge ``message`` (sent with the others made before the next send)."""
        self._settle(message, True)

    def nack(self, message: Any) -> None:
        """Reject ``message`` without requeueing (to its dead-letter queue), in order."""
        self._settle(message, False)

    def _settle(self, message: Any, ok: bool) -> None:
        try:
            self.known_tags.remove(message._tag)
        except KeyError:
            self.logger.warning("Failed to settle message: not in known tags.")
            return
        self._queue(message._tag, ok)

    def _nack(self, tag: int) -> None:
        # Dramatiq's own path for a message it could not decode: in order with the rest.
        self._queue(tag, False)

    def _queue(self, tag: int, ok: bool) -> None:
        with self._settle_lock:
            self._pending.append((tag, ok))
            if len(self._pending) > 1:
                return  # the callback queued by the first since the last send sends it
            try:
                # Under the lock (it does not block): queued before any later callback.
                self.connection.add_callback_threadsafe(self._send_pending)
            except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError) as e:
                # The connection is gone: nothing queued here can be sent, as with
                # Dramatiq's own consumer; the broker redelivers those messages to the
                # next consumer, and the attempt fence refuses what already ran.
                self._pending.clear()
                raise ConnectionClosed(e) from None  # type: ignore[no-untyped-call]

    def _send_pending(self) -> None:
        """Send the queued settlements, on the connection's thread: one write for all."""
        with self._settle_lock:
            pending, self._pending = self._pending, []
        if not pending:
            return
        impl = self.channel._impl
        *buffered, (last_tag, last_ok) = pending
        for tag, ok in buffered:
            if ok:
                impl.basic_ack(delivery_tag=tag)
            else:
                impl.basic_nack(delivery_tag=tag, requeue=False)
        # The blocking call writes the buffer out, the frames above first.
        if last_ok:
            self.channel.basic_ack(last_tag)
        else:
            self.channel.basic_nack(last_tag, requeue=False)


class ErrandRabbitmqBroker(RabbitmqBroker):
    """Dramatiq's RabbitMQ broker, consuming with :class:`BatchedAckConsumer`."""

    @property
    def consumer_class(self) -> type[BatchedAckConsumer]:
        """The consumer Dramatiq's worker threads are fed by."""
        return BatchedAckConsumer
