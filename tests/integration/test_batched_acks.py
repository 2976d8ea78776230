"""The worker's consumer sends a pass's acks and nacks in one write, and each message
is settled as Dramatiq said (errand_worker.consumer), on a real RabbitMQ."""

import random
import threading
import uuid
from typing import Any

import dramatiq
import pytest

from errand_worker.consumer import BatchedAckConsumer, ErrandRabbitmqBroker

from helpers import wait_for


def _fill(broker: ErrandRabbitmqBroker, queue: str, n: int) -> None:
    broker.declare_queue(queue)
    for i in range(n):
        broker.enqueue(dramatiq.Message(queue, "noop", (i,), {}, {}))


def _take(consumer: BatchedAckConsumer, n: int) -> list[Any]:
    got: list[Any] = []

    def taken() -> bool:
        message = next(consumer)
        if message is not None:
            got.append(message)
        return len(got) == n

    wait_for(taken, 10, 0, what=f"{n} messages")
    return got


def test_a_pass_of_acks_and_nacks_is_one_write_and_settles_each_message(
    broker: ErrandRabbitmqBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = f"acks-{uuid.uuid4().hex[:8]}"
    _fill(broker, queue, 12)
    consumer = broker.consume(queue, prefetch=20, timeout=50)
    assert isinstance(consumer, BatchedAckConsumer)
    got = _take(consumer, 12)
    blocking: list[str] = []
    channel = consumer.channel
    ack, nack = channel.basic_ack, channel.basic_nack
    monkeypatch.setattr(
        channel, "basic_ack", lambda *a, **k: (blocking.append("ack"), ack(*a, **k))
    )
    monkeypatch.setattr(
        channel, "basic_nack", lambda *a, **k: (blocking.append("nack"), nack(*a, **k))
    )
    # Dramatiq settles a pass in the order its threads finished: here shuffled, 3 failed
    random.Random(7).shuffle(got)
    failed = got[:3]
    for message in got:
        (consumer.nack if message in failed else consumer.ack)(message)
    assert blocking == []  # nothing sent before the consumer's next turn
    assert next(consumer) is None  # the turn: the queue is empty
    assert len(blocking) == 1  # one blocking call wrote the whole pass
    consumer.close()
    # Acked messages are gone, the failed ones are in the dead-letter queue, none requeued
    _wait_counts(broker, queue, dead=3)


def test_messages_settled_across_passes_each_go_out(broker: ErrandRabbitmqBroker) -> None:
    queue = f"acks-{uuid.uuid4().hex[:8]}"
    _fill(broker, queue, 5)
    consumer = broker.consume(queue, prefetch=1, timeout=50)
    for _ in range(5):  # one message in flight at a time: it must be acked to get the next
        (message,) = _take(consumer, 1)
        consumer.ack(message)
    assert next(consumer) is None
    consumer.close()
    _wait_counts(broker, queue, dead=0)


def test_acks_from_worker_threads_are_all_sent_when_the_consumer_closes(
    broker: ErrandRabbitmqBroker,
) -> None:
    # Dramatiq's worker threads settle their messages themselves, concurrently
    queue = f"acks-{uuid.uuid4().hex[:8]}"
    _fill(broker, queue, 16)
    consumer = broker.consume(queue, prefetch=20, timeout=50)
    got = _take(consumer, 16)
    failed = got[::8]  # two of them

    def settle(part: list[Any]) -> None:
        for message in part:
            (consumer.nack if message in failed else consumer.ack)(message)

    threads = [threading.Thread(target=settle, args=(got[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    # Closed before its connection ran another turn: close() sends what was queued first
    consumer.close()
    _wait_counts(broker, queue, dead=2)


def _wait_counts(broker: ErrandRabbitmqBroker, queue: str, *, dead: int) -> None:
    """Wait until ``queue`` holds no message (ready, delayed) and ``dead`` dead letters."""
    wait_for(
        lambda: broker.get_queue_message_counts(queue) == (0, 0, dead),
        10,
        0.1,
        what=f"{queue} to hold no message and {dead} dead letters",
    )
