"""The worker's background event publisher on the real Redis: entries reach the stream
in the order they were published, ``flush`` waits for them, the step message is sent
only after the events before it are in the stream, and a Redis outage neither blocks
nor fails the publisher."""

import threading
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import Engine

from errand_schema.events import (
    BackgroundEventPublisher,
    EventType,
    JobEventMessage,
    parse_stream_entry,
    stream_key,
)
from errand_schema.messages import RunJobStep
from errand_worker.broker import make_enqueue

from resources import REDIS_URL

pytestmark = pytest.mark.integration


@pytest.fixture
def prefix(redis_prefix: str) -> str:
    """A key prefix of this test (under the run's prefix, whose keys go at the end)."""
    return f"{redis_prefix}pub:{uuid.uuid4().hex[:8]}:"


def _event(job_id: uuid.UUID, seq: int) -> JobEventMessage:
    return JobEventMessage(
        job_id=job_id,
        owner=uuid.UUID(int=1),
        seq=seq,
        type=EventType.PROGRESS,
        status="running",
        progress=seq % 100,
        at=datetime.now(UTC),
    )


def _stream(client: redis.Redis, prefix: str) -> list[JobEventMessage]:
    return [parse_stream_entry(fields) for _, fields in client.xrange(stream_key(prefix))]


def test_events_from_many_threads_arrive_in_each_threads_order(prefix: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    publisher = BackgroundEventPublisher(client, prefix)
    jobs = [uuid.uuid4() for _ in range(4)]

    def produce(job_id: uuid.UUID) -> None:
        for seq in range(1, 201, 2):
            publisher.publish([_event(job_id, seq), _event(job_id, seq + 1)])

    threads = [threading.Thread(target=produce, args=(j,)) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert publisher.flush(10)
    written = _stream(client, prefix)
    assert len(written) == 800
    for job_id in jobs:
        assert [e.seq for e in written if e.job_id == job_id] == list(range(1, 201))
    publisher.close()


def test_close_writes_what_is_pending(prefix: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    publisher = BackgroundEventPublisher(client, prefix)
    job_id = uuid.uuid4()
    for seq in range(1, 51):
        publisher.publish([_event(job_id, seq)])
    publisher.close()
    assert [e.seq for e in _stream(client, prefix)] == list(range(1, 51))


class WatchingBroker(StubBroker):
    """Records how many events of the job were in the stream when a message was sent."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        super().__init__()
        self.client, self.prefix = client, prefix
        self.seen_at_send: list[int] = []

    def enqueue(self, message: Any, *, delay: int | None = None) -> Any:
        self.seen_at_send.append(len(_stream(self.client, self.prefix)))
        return super().enqueue(message, delay=delay)


def test_a_step_message_is_sent_after_the_events_before_it_are_in_the_stream(
    prefix: str, sqlite_engine: Engine
) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    publisher = BackgroundEventPublisher(client, prefix)
    broker = WatchingBroker(client, prefix)
    broker.declare_queue("default")
    enqueue = make_enqueue(broker, sqlite_engine, before_send=publisher.flush)
    job_id = uuid.uuid4()
    for seq in range(1, 101):
        publisher.publish([_event(job_id, seq)])
    enqueue(RunJobStep(job_id=job_id, step_index=1, attempt=1), "default", "normal", None)
    assert broker.seen_at_send == [100]
    publisher.close()


def test_a_redis_outage_neither_blocks_nor_fails_publishing(prefix: str) -> None:
    # Nothing listens on port 1: every append fails at once.
    down = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    publisher = BackgroundEventPublisher(down, prefix, max_pending=10)
    job_id = uuid.uuid4()
    for seq in range(1, 1001):
        publisher.publish([_event(job_id, seq)])  # returns at once, never raises
    assert publisher.flush(10), "given up on, not stuck"
    publisher.close()
    assert not publisher._thread.is_alive()
